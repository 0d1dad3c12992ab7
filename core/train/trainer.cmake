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
