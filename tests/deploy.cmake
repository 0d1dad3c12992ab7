# deploy/k8s and the Dockerfile's binaries: renders the kustomize overlays,
# validates every manifest against the Kubernetes API schemas, and checks every
# container flag/probe port/metric against the built binaries (tests/deploy).
find_program(INTERNVL_NODE node)
find_program(INTERNVL_NPM npm)
if(NOT INTERNVL_NODE OR NOT INTERNVL_NPM)
  message(STATUS "deploy_manifests_test: node/npm not found, test not registered")
  return()
endif()
foreach(t internvl internvl-gateway internvl-preprocess internvl-vision-encoder internvl-llm-decoder
        internvl-trainer)
  if(NOT TARGET ${t})
    message(STATUS "deploy_manifests_test: target ${t} missing, test not registered")
    return()
  endif()
endforeach()
add_test(NAME deploy_manifests_test
         COMMAND ${CMAKE_CURRENT_LIST_DIR}/deploy/check.sh ${CMAKE_BINARY_DIR})
set_tests_properties(deploy_manifests_test PROPERTIES LABELS "deploy" TIMEOUT 600
                     RUN_SERIAL TRUE)
