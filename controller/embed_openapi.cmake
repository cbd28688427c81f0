# Writes OUT, a C file holding the bytes of IN (docs/openapi.yaml) as
# pc_openapi_yaml (controller/openapi_doc.h), so the controller serves the
# document it was built with: cmake -DIN=... -DOUT=... -P embed_openapi.cmake
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" digits)
math(EXPR len "${digits} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE "${OUT}" "/* Generated from docs/openapi.yaml by controller/embed_openapi.cmake. */\n"
  "#include \"openapi_doc.h\"\n"
  "const unsigned char pc_openapi_yaml[] = {${bytes}0};\n"
  "const size_t pc_openapi_yaml_len = ${len};\n")
