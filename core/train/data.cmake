# internvl_train_data: the fine-tuning data pipeline (meta JSON / jsonl, the
# official per-template preprocess functions, image/video samples through
# inference's own preprocessing, the collator). Torch-free.
add_library(internvl_train_data
  ${CMAKE_CURRENT_LIST_DIR}/data.cc
  ${CMAKE_CURRENT_LIST_DIR}/data_preprocess.cc
)
internvl_target_defaults(internvl_train_data)
target_link_libraries(internvl_train_data
  PUBLIC internvl_base internvl_tokenizer
  PRIVATE internvl_preprocess $<TARGET_NAME_IF_EXISTS:internvl_video>)
# Video records need core/video (absent when that area is skipped).
target_compile_definitions(internvl_train_data PRIVATE $<$<TARGET_EXISTS:internvl_video>:INTERNVL_HAVE_VIDEO=1>)
