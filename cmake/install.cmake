# `cmake --install build --prefix P`: P/bin/mpass, P/lib/libmpass.{so,a}, P/include/mpass/mpass.h,
# P/lib/pkgconfig/mpass.pc, P/share/man/man1/mpass.1, P/share/mpass/{vision,upscale}/ (the fetched
# models, when scripts/fetch-models.sh has run), P/share/doc/mpass/. `cpack -G DEB` in the build
# folder makes the Debian package from the same rules.

# The man page, from the commands' own --help (mpass help-man), so it never disagrees with them.
add_custom_command(OUTPUT ${CMAKE_BINARY_DIR}/mpass.1
  COMMAND mpass_cli help-man > ${CMAKE_BINARY_DIR}/mpass.1
  DEPENDS mpass_cli
  COMMENT "Generating the man page mpass.1"
  VERBATIM)
add_custom_target(man ALL DEPENDS ${CMAKE_BINARY_DIR}/mpass.1)

# pkg-config: relocatable (paths relative to the .pc file), so an install moved to another prefix
# still builds. The static library needs the dependencies' own flags (Requires.private/Libs.private).
file(RELATIVE_PATH MPASS_PC_TO_PREFIX "/prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/prefix")
string(REGEX REPLACE "/$" "" MPASS_PC_TO_PREFIX "${MPASS_PC_TO_PREFIX}")
configure_file(${CMAKE_SOURCE_DIR}/cmake/mpass.pc.in ${CMAKE_BINARY_DIR}/mpass.pc @ONLY)

install(TARGETS mpass_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS mpass_shared LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
# the static library: its objects are mpass_objects'
install(TARGETS mpass ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES ${CMAKE_SOURCE_DIR}/include/mpass/mpass.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/mpass)
install(FILES ${CMAKE_BINARY_DIR}/mpass.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
install(FILES ${CMAKE_BINARY_DIR}/mpass.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(FILES ${CMAKE_SOURCE_DIR}/NOTICE ${CMAKE_SOURCE_DIR}/README.md ${CMAKE_SOURCE_DIR}/data/clip/LICENSE.openai-CLIP
  DESTINATION ${CMAKE_INSTALL_DOCDIR})
# The fetched detection/upscaling models (git-ignored models/, often a symlink): copied as files.
foreach(kind vision upscale)
  install(DIRECTORY ${CMAKE_SOURCE_DIR}/models/${kind}/ DESTINATION ${CMAKE_INSTALL_DATADIR}/mpass/${kind}
    OPTIONAL PATTERN "images" EXCLUDE)
endforeach()

# Debian package: cpack -G DEB (in the build folder). Depends come from dpkg-shlibdeps.
set(CPACK_PACKAGE_NAME mpass)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "mpass maintainers <mpass@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "multi-pass Stable Diffusion inference on the CPU")
set(CPACK_PACKAGE_DESCRIPTION "mpass runs Stable Diffusion 1.x on the CPU in passes (scene, persons, upscaling,\n faces, grading, grain) from a prompt document. Library, command-line program and models.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION graphics)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_STRIP_FILES ON)
set(CPACK_GENERATOR DEB)
include(CPack)
