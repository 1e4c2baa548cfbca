/* Compiles Debian node-llhttp's api.c (apt-get install node-llhttp); no third-party source is committed. */
#include "/usr/share/llhttp/api.c"
