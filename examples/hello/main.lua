-- The smallest popcast tenant: answers every request with a greeting.
-- Deploy it with: popcast deploy hello examples/hello
local greeting = "Hello from popcast"

return function(req)
  -- print goes to `popcast tail hello` while someone tails it.
  print("hello served", req.method, req.path)
  return {
    status = 200,
    headers = { ["content-type"] = "text/plain; charset=utf-8" },
    body = greeting .. " (" .. req.method .. " " .. req.path .. ")\n",
  }
end
