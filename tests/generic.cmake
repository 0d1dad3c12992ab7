# The device-generic code paths (what a GPU runs: libtorch ops, batched paged
# decode attention, tiles normalised by the vision model) exercised on the
# CPU: the same tests again with INTERNVL_KERNELS=generic (core/nn/device.h).
# Deferred to the end of this directory, after the other includes define them.
function(internvl_generic_variants)
foreach(t llm_parity_test chat_parity_test vision_parity_test train_parity_test engine_llm_test llm_paged_test
          vision_normalize_test)
  if(TARGET ${t})
    add_test(NAME ${t}_generic COMMAND ${t})
    get_test_property(${t} LABELS labels)
    if(NOT labels)
      set(labels "")
    endif()
    set_tests_properties(${t}_generic PROPERTIES
      ENVIRONMENT "INTERNVL_SOURCE_DIR=${PROJECT_SOURCE_DIR};INTERNVL_KERNELS=generic"
      LABELS "${labels};generic")
  endif()
endforeach()
endfunction()
cmake_language(DEFER CALL internvl_generic_variants)
