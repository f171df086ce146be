//! `Secret`: a string that must never reach a log, an error or a `Debug` dump. Its own module,
//! at the bottom of the support layer, so that `store` and `wechat` carry secrets without
//! depending on `config`. Imports nothing of the crate.

use serde::Deserialize;
use std::fmt;

/// A string that must never reach a log, an error or a `Debug` dump (app secrets, api keys).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(empty)"
        } else {
            "Secret(***)"
        })
    }
}
