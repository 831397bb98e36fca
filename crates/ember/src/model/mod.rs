//! Model loading: finds the format of a path (diffusers folder, single-file LDM `.safetensors`,
//! `.ckpt`/`.pt`, Hugging Face repo id), maps its tensors to diffusers' names and infers the configuration.
