# Command-line tests written as shell scripts (tests/cli/sh/*.sh): what a user does with the
# installed program, run against the built one.
set(MPASS_SH ${CMAKE_SOURCE_DIR}/tests/cli/sh)
add_test(NAME cli_conform_abs_ckpt COMMAND ${MPASS_SH}/conform_abs_ckpt.sh $<TARGET_FILE:mpass_cli> ${MPASS_SHARED_DIR}/golden/tiny)
set_tests_properties(cli_conform_abs_ckpt PROPERTIES TIMEOUT 900)
add_test(NAME cli_run_without_vocab COMMAND ${MPASS_SH}/run_without_vocab.sh $<TARGET_FILE:mpass_cli>)
set_tests_properties(cli_run_without_vocab PROPERTIES TIMEOUT 900)
add_test(NAME cli_help COMMAND ${MPASS_SH}/help.sh $<TARGET_FILE:mpass_cli>)
# The installed tree (label install): cmake --install into a temporary prefix, pkg-config consumer.
add_test(NAME cli_install COMMAND ${MPASS_SH}/install.sh ${CMAKE_BINARY_DIR} ${CMAKE_SOURCE_DIR})
set(MPASS_CONSUMER_FLAGS "")
if(MPASS_SANITIZE) # the installed library is instrumented: so must its consumer be
  set(MPASS_CONSUMER_FLAGS "-fsanitize=address,undefined")
endif()
set_tests_properties(cli_install PROPERTIES LABELS install TIMEOUT 600
  ENVIRONMENT "CC=${CMAKE_C_COMPILER};CC_FLAGS=${MPASS_CONSUMER_FLAGS}")
add_test(NAME cli_bench_job COMMAND ${MPASS_SH}/bench_job.sh $<TARGET_FILE:mpass_cli>)
set_tests_properties(cli_bench_job PROPERTIES TIMEOUT 900)
