/* Compiles Debian node-llhttp's llhttp.c (apt-get install node-llhttp); no third-party source is committed. */
#include "/usr/share/llhttp/llhttp.c"
