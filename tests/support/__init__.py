"""What the tests, the benchmark and `make` share: processes, the stub, the private MariaDB."""
