/* Compiles Debian node-llhttp's http.c (apt-get install node-llhttp); no third-party source is committed. */
#include "/usr/share/llhttp/http.c"
