-- Echoes the request back as JSON-ish text: a tour of the request table.
-- Deploy: popcast deploy echo examples/echo
-- Try:    curl -H 'X-Popcast-Tenant: echo' 'http://127.0.0.1:8081/some/path?x=1' -d 'hi'

local function quote(s)
  -- string.format's %q is Lua syntax, close enough to JSON for a demo
  return (string.format("%q", s):gsub("\\\n", "\\n"))
end

return function(req)
  local names = {}
  for name in pairs(req.headers) do names[#names + 1] = name end
  table.sort(names)
  local headers = {}
  for _, name in ipairs(names) do
    headers[#headers + 1] = quote(name) .. ": " .. quote(req.headers[name])
  end
  local body = table.concat({
    "{",
    '  "method": ' .. quote(req.method) .. ",",
    '  "path": ' .. quote(req.path) .. ",",
    '  "query": ' .. quote(req.query) .. ",",
    '  "headers": {' .. table.concat(headers, ", ") .. "},",
    '  "body": ' .. quote(req.body),
    "}",
  }, "\n")
  return {
    status = 200,
    headers = { ["content-type"] = "application/json" },
    body = body .. "\n",
  }
end
