/* Compiles Debian node-llhttp's llhttp.c (apt-get install node-llhttp); no third-party source is committed.
 * Strict mode: no leniency on header names, line endings, or request lines (a proxy must not
 * interpret a message differently from the backend behind it). */
#define LLHTTP_STRICT_MODE 1
#include "/usr/share/llhttp/llhttp.c"
