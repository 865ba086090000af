# The web page in headless Chromium (tests/server/web.test.mjs, Node's own test runner, no npm packages).
find_program(NODE_EXECUTABLE node)
if(NODE_EXECUTABLE)
  add_test(NAME server_web_browser COMMAND ${NODE_EXECUTABLE} --test ${CMAKE_SOURCE_DIR}/tests/server/web.test.mjs
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(server_web_browser PROPERTIES TIMEOUT 600 LABELS "server_slow;browser"
    ENVIRONMENT "MPASS_SHARED=${MPASS_SHARED_DIR};MPASS_SOURCE_DIR=${CMAKE_SOURCE_DIR};MPASS_BINARY_DIR=${CMAKE_BINARY_DIR}")
endif()
