internvl_test(NAME chat_parity_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/chat_parity_test.cc
              LIBS internvl_chat internvl_nn LABELS parity)
target_compile_definitions(chat_parity_test PRIVATE $<$<TARGET_EXISTS:internvl_video>:INTERNVL_HAVE_VIDEO=1>)
# MiniMonkey (two-scale tiling, SCM) against its official chat on the tiny
# InternVL2-2B-style model.
internvl_test(NAME minimonkey_parity_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/minimonkey_parity_test.cc
              LIBS internvl_chat internvl_hub internvl_nn LABELS parity)
