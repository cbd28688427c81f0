# Writes OUT, a C file holding the bytes of IN (an OpenAPI document, a
# dashboard asset) as
# NAME and NAME_len, declared in HEADER, so a daemon serves the document
# it was built with:
#   cmake -DIN=... -DOUT=... -DNAME=pc_openapi_yaml -DHEADER=openapi_doc.h -P embed_openapi.cmake
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" digits)
math(EXPR len "${digits} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE "${OUT}" "/* Generated from ${IN} by controller/embed_openapi.cmake. */\n"
  "#include \"${HEADER}\"\n"
  "const unsigned char ${NAME}[] = {${bytes}0};\n"
  "const size_t ${NAME}_len = ${len};\n")
