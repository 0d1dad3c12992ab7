# `internvl make-model` (core/modelgen; --awq rewrites the LLM layers with core/llm).
target_sources(internvl PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/cmd_make_model.cc)
target_link_libraries(internvl PRIVATE internvl_modelgen internvl_llm)
