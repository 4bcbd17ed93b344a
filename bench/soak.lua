-- wrk: mixed traffic for the soak, reads with some writes; every answer should be 2xx.
-- Run from the repository's root: the JSON summary comes from report.lua.
dofile("bench/report.lua")
local paths = {
  "/", "/db", "/api/v1/users?limit=50", "/api/v1/posts?ids=1,2,3,4,5,6,7,8,9,10",
  "/api/v1/posts/7", "/healthz", "/readyz", "/api/v1/users?limit=5&after=20",
}
local counter = 0
local token = os.getenv("SOAK_TOKEN")
math.randomseed(os.time())
local run = math.random(1, 1000000000)

request = function()
  counter = counter + 1
  if counter % 10 == 0 then
    local body = string.format('{"name": "Soak %d", "email": "soak-%d-%d@example.com"}', counter, run, counter)
    return wrk.format("POST", "/api/v1/users",
      {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
  end
  return wrk.format("GET", paths[(counter % #paths) + 1])
end
