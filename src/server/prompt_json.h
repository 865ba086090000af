/* A parsed document's parameters as the prompt object's fields (stored once, at creation). */
#ifndef MP_SERVER_PROMPT_JSON_H
#define MP_SERVER_PROMPT_JSON_H

#include <cjson/cJSON.h>

#include "prompt/document.h"

cJSON *ms_prompt_params(const mp_job *j);

#endif
