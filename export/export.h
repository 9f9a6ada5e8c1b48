// export — adapter files. PEFT layout: DIR/adapter_model.safetensors with keys
//   base_model.model.model.layers.N.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight
//   base_model.model.model.layers.N.mlp.{gate,up,down}_proj.lora_{A,B}.weight
// (A (r,in), B (out,r)) and DIR/adapter_config.json (peft_type LORA, task_type CAUSAL_LM,
// r, lora_alpha, target_modules, lora_dropout, bias none, use_rslora, fan_in_fan_out false,
// base_model_name_or_path). Files are written to temporary names and renamed.
#pragma once
#include "util/util.h"
#include "model/model.h"

int adapter_save_peft(const LoraAdapter *a, const Model *m, const char *dir, Err *e);
// Loads a PEFT adapter directory for model m, checking every shape against m.
LoraAdapter *adapter_load_peft(const char *dir, const Model *m, Err *e);
