# core/hub: downloads from a Hugging Face hub on loopback (core/hub/fake_hub_server).
internvl_test(NAME hub_download_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/hub_download_test.cc
              LIBS internvl_hub internvl_hub_fake_server)
