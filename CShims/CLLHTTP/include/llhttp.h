/* The HTTP/1 parser is llhttp, built from Debian's node-llhttp package
 * (sources in /usr/share/llhttp, header in /usr/share/include/llhttp).
 * No third-party source is committed here: this header and llhttp_all.c
 * only point at the installed copy. */
#include "/usr/share/include/llhttp/llhttp.h"
