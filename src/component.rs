//! The Open Platform component (third-party platform): the verify ticket WeChat pushes, the
//! component token, pre-auth codes, authorisers and their tokens. The tokens themselves are
//! hosted by `credential::Broker`; this module provides the fetchers it calls.

use crate::credential::{Broker, Fetched};
use crate::error::Error;
use crate::store::Db;

/// Fetch a component access token with the stored verify ticket.
pub fn fetch_component_token(
    _broker: &Broker,
    _db: &Db,
    _component_appid: &str,
) -> Result<Fetched, Error> {
    Err(Error::NotFound("component"))
}

/// Fetch an authoriser access token with the stored refresh token (and store a rotated one).
pub fn fetch_authorizer_token(
    _broker: &Broker,
    _db: &Db,
    _component_appid: &str,
    _authorizer_appid: &str,
) -> Result<Fetched, Error> {
    Err(Error::NotFound("authoriser"))
}
