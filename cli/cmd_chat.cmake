# `internvl chat`: the in-process pipeline.
target_sources(internvl PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/cmd_chat.cc ${CMAKE_CURRENT_SOURCE_DIR}/chat_flags.cc)
target_link_libraries(internvl PRIVATE internvl_chat)
