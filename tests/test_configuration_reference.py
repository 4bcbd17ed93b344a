"""docs/configuration.md and the Settings class cannot drift: its table names every
setting exactly once, nothing else, each with the default the code has."""

from __future__ import annotations

from pathlib import Path

from app.settings import Settings

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def reference_table() -> dict[str, str]:
    """`| name | default | meaning |` rows of the first table: name -> default as written."""
    rows: dict[str, str] = {}
    lines = REFERENCE.read_text().splitlines()
    start = lines.index("| name | default | meaning |")
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        name, default = (cell.strip() for cell in line.strip("|").split("|")[:2])
        assert name not in rows, f"{name} is listed twice"
        rows[name.strip("`")] = default.strip("`")
    return rows


def as_written(value: object) -> str:
    """How the reference writes a default."""
    if value is None or value == []:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text.removesuffix("/") if text.count("/") == 3 else text  # https://host/ as written


def test_every_setting_is_in_the_reference_and_nothing_else() -> None:
    documented = reference_table()

    assert set(documented) == {name.upper() for name in Settings.model_fields}


def test_each_default_is_the_codes() -> None:
    documented = reference_table()
    for name, field in Settings.model_fields.items():
        if name == "upstream_urls":  # unset means computed from UPSTREAM_BASE_URL
            continue
        default = field.get_default(call_default_factory=True)
        assert documented[name.upper()] == as_written(default), name
