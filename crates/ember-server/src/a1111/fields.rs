//! Reading an A1111 JSON body as its pydantic models do: leniently, field by field, remembering what was read so that
//! the rest can be reported (when it would have changed the image) as ignored.

use super::{invalid, A1111Error, Result};
use crate::error::{clip, ApiError};
use serde_json::{json, Map, Value};

/// A JSON object body whose fields are read one by one, null counting as absent; what is read is remembered, so
/// that the rest can be reported as ignored.
pub(super) struct Fields {
    pub(super) map: Map<String, Value>,
    read: Vec<&'static str>,
}

impl Fields {
    pub(super) fn parse(body: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| A1111Error(ApiError::bad_request(None, format!("the body is not valid JSON: {e}"))))?;
        match value {
            Value::Object(map) => Ok(Self { map, read: Vec::new() }),
            _ => Err(A1111Error(ApiError::bad_request(
                None,
                "the body must be a JSON object",
            ))),
        }
    }

    pub(super) fn get(&mut self, name: &'static str) -> Option<&Value> {
        self.read.push(name);
        self.map.get(name).filter(|v| !v.is_null())
    }

    pub(super) fn int(&mut self, name: &'static str) -> Result<Option<i64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match (v.as_i64(), v.as_f64()) {
                (Some(i), _) => Ok(Some(i)),
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9e15 => Ok(Some(f as i64)),
                _ => Err(invalid(name, format!("{} is not a whole number", clip(&v.to_string())))),
            },
        }
    }

    pub(super) fn float(&mut self, name: &'static str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| invalid(name, format!("{} is not a number", clip(&v.to_string())))),
        }
    }

    /// true/false, or A1111's 0/1 integers (`inpainting_mask_invert`).
    pub(super) fn flag(&mut self, name: &'static str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) if v.as_i64() == Some(0) => Ok(Some(false)),
            Some(v) if v.as_i64() == Some(1) => Ok(Some(true)),
            Some(v) => Err(invalid(
                name,
                format!("{} is not true/false (or 0/1)", clip(&v.to_string())),
            )),
        }
    }

    pub(super) fn string(&mut self, name: &'static str) -> Result<Option<String>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(invalid(name, format!("{} is not a string", clip(&v.to_string())))),
        }
    }

    /// A size or count in `min..=max`.
    pub(super) fn count(&mut self, name: &'static str, min: i64, max: i64) -> Result<Option<usize>> {
        match self.int(name)? {
            None => Ok(None),
            Some(v) if (min..=max).contains(&v) => Ok(Some(v as usize)),
            Some(v) => Err(invalid(name, format!("{v} is outside {min}..={max}"))),
        }
    }

    /// The fields not read, with values that would have changed the image (`styles: ["x"]`, `restore_faces: true`),
    /// as notes. Values that change nothing — null, false, 0, "", [], {} and A1111's neutral defaults — are not
    /// reported, nor fields that only concern A1111's own files and scripts.
    pub(super) fn ignored(&self) -> Vec<String> {
        self.map
            .iter()
            .filter(|(k, v)| !self.read.contains(&k.as_str()) && !neutral(k, v))
            .map(|(k, v)| {
                let mut shown = v.to_string();
                if shown.chars().count() > 60 {
                    shown = format!("{}…", shown.chars().take(60).collect::<String>());
                }
                format!("{k} = {shown}: not supported by Ember, ignored")
            })
            .collect()
    }
}

/// Whether an unread field's value would change nothing (see [`Fields::ignored`]).
pub(super) fn neutral(key: &str, value: &Value) -> bool {
    const SILENT: [&str; 18] = [
        "send_images",
        "save_images",
        "do_not_save_samples",
        "do_not_save_grid",
        "override_settings_restore_afterwards",
        "sampler_index",
        "image_cfg_scale",
        "mask_round",
        "inpaint_full_res_padding",
        "include_init_images",
        "force_task_id",
        "infotext",
        "comments",
        "user",
        "firstphase_width",
        "firstphase_height",
        "script_args",
        "disable_extra_networks",
    ];
    if SILENT.contains(&key) {
        return true;
    }
    let neutral_number = match key {
        "eta" | "s_noise" | "initial_noise_multiplier" => Some(1.0),
        "seed_resize_from_h" | "seed_resize_from_w" => Some(-1.0),
        _ => None,
    };
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => {
            let n = n.as_f64().unwrap_or(0.0);
            n == 0.0 || Some(n) == neutral_number || (key.starts_with("seed_resize") && n <= 0.0)
        }
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => {
            o.is_empty()
                || (key == "alwayson_scripts"
                    && o.values().all(|v| {
                        v["args"]
                            .as_array()
                            .is_some_and(|a| a.is_empty() || a == &[json!(false)])
                    }))
        }
    }
}
