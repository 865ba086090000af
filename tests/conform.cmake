# One CTest test per golden suite and case list. Add a line when a new case family lands.
set(G ${MPASS_SHARED_DIR}/golden)
add_test(NAME conform_tiny_text COMMAND mpass_cli conform ${G}/tiny --cases te)  # the tokenizer case joins when it lands
set_tests_properties(conform_tiny_text PROPERTIES TIMEOUT 900
  ENVIRONMENT "MPASS_SHARED=${MPASS_SHARED_DIR}")
add_test(NAME conform_tiny_image COMMAND mpass_cli conform ${G}/tiny --cases unet,vae,lora)
set_tests_properties(conform_tiny_image PROPERTIES TIMEOUT 900
  ENVIRONMENT "MPASS_SHARED=${MPASS_SHARED_DIR}")
