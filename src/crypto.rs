//! PLACEHOLDER until the crypto module lands.
#[derive(Debug)]
pub struct CryptoError;
impl std::fmt::Display for CryptoError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("crypto") } }
pub fn decrypt_user_data(_k: &str, _d: &str, _iv: Option<&str>) -> Result<Vec<u8>, CryptoError> { Err(CryptoError) }
pub fn encrypt_user_data(_k: &str, _p: &[u8], _iv: Option<&[u8; 16]>) -> Result<String, CryptoError> { Err(CryptoError) }
pub fn check_watermark(_p: &[u8], _a: &str) -> Result<serde_json::Value, CryptoError> { Err(CryptoError) }
pub fn parse_user_data(_p: &[u8]) -> Result<serde_json::Value, CryptoError> { Err(CryptoError) }
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool { a == b }
