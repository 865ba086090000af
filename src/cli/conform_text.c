/* Conformance cases of the text side: tokenizer (tok) and CLIP text encoder (te). */
#include "cli/conform.h"

mp_error *conform_case_tok(conform *c) { (void)c; return mp_errorf("tokenizer not implemented yet"); }
mp_error *conform_case_te(conform *c) { (void)c; return mp_errorf("text encoder not implemented yet"); }
