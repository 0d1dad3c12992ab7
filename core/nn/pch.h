// Precompiled header for the model code: the torch headers it uses.
#pragma once
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/normalization.h>
