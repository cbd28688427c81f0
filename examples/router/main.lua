-- A small router: paths to handlers, query parsing with Lua patterns,
-- status codes and headers. Module-level tables are built once per
-- isolate, when the version is prepared, not per request.
-- Deploy: popcast deploy shop examples/router

local function parse_query(q)
  local params = {}
  for key, value in q:gmatch("([^&=]+)=?([^&]*)") do
    params[key] = value
  end
  return params
end

local products = { apple = 3, pear = 5, plum = 2 }

local routes = {}

routes["GET /"] = function(req)
  return "try /price?item=apple or /items\n"
end

routes["GET /items"] = function(req)
  local names = {}
  for name in pairs(products) do names[#names + 1] = name end
  table.sort(names)
  return { headers = { ["content-type"] = "text/plain" }, body = table.concat(names, "\n") .. "\n" }
end

routes["GET /price"] = function(req)
  local item = parse_query(req.query).item
  local price = item and products[item]
  if not price then
    return { status = 404, body = "no such item\n" }
  end
  return { headers = { ["cache-control"] = "max-age=60" }, body = item .. ": " .. price .. "\n" }
end

return function(req)
  local route = routes[req.method .. " " .. req.path]
  if route == nil then
    return { status = 404, body = "not found\n" }
  end
  return route(req)
end
