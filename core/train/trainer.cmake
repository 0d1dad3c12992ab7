# internvl_train: the SFT trainer (model + loss + AdamW + schedule +
# checkpoints + c10d Gloo data parallel) over internvl_train_data.
find_library(INTERNVL_GLOO_LIB gloo)
add_library(internvl_train trainer.cc)
internvl_target_defaults(internvl_train)
target_precompile_headers(internvl_train REUSE_FROM internvl_nn)
target_link_libraries(internvl_train PUBLIC internvl_base PRIVATE internvl_train_data internvl_vision internvl_llm
                      internvl_tokenizer internvl_hub nlohmann_json::nlohmann_json)
if(INTERNVL_GLOO_LIB)
  target_link_libraries(internvl_train PRIVATE ${INTERNVL_GLOO_LIB})
endif()
# libtorch's ProcessGroupGloo.hpp includes gloo's own headers: a libtorch
# without them (some pip wheels) trains in one process.
find_path(INTERNVL_GLOO_INCLUDE gloo/config.h HINTS ${TORCH_INCLUDE_DIRS})
if(NOT INTERNVL_GLOO_INCLUDE)
  message(STATUS "internvl: no gloo headers beside libtorch: training runs in one process (world_size 1)")
  target_compile_definitions(internvl_train PRIVATE INTERNVL_NO_GLOO=1)
endif()
