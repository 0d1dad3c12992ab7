# The container image: deploy/build_image.sh builds the Dockerfile with docker
# or podman (making the Debian base with debootstrap when no registry is
# reachable), checks its size (<= 700 MB) and smoke-tests it (internvl --help,
# a chat on tiny-qwen2 against the official token ids, serve --all-in-one with
# /healthz and an OpenAI API chat from the host). The image's build stage
# compiles the whole tree in Release with -Werror, so this is also the Release
# warning check. Label `image`, left out of scripts/test.sh (a cold image build
# compiles the tree again: 30-60 min on 2 cores); run it with
#   ctest -L image --output-on-failure        (or INTERNVL_IMAGE_TEST=1 scripts/test.sh)
# Skipped (exit 77) where no container engine can start a container, or
# without the fixtures.
# The image holds the whole tree: not registered in a trimmed build
# (INTERNVL_WITH_SERVICES / INTERNVL_WITH_MEDIA off).
if(NOT INTERNVL_WITH_SERVICES OR NOT INTERNVL_WITH_MEDIA)
  return()
endif()
add_test(NAME image_build_test COMMAND ${PROJECT_SOURCE_DIR}/deploy/build_image.sh)
set_tests_properties(image_build_test PROPERTIES LABELS "image" TIMEOUT 5400 RUN_SERIAL TRUE SKIP_RETURN_CODE 77
                     ENVIRONMENT "IMAGE=internvl:ctest")
