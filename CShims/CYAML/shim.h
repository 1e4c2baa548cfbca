#ifndef REMORA_CYAML_SHIM_H
#define REMORA_CYAML_SHIM_H
#include <yaml.h>
#endif
