//! Every WeChat URL wafer uses: the upstream paths it calls, with the host each is called on
//! (`wechat::Host`), and the pages it sends a browser to. Paths are also the `endpoint` label of
//! `wafer_upstream_calls_total` and of the upstream log line, so they never carry a query.

// api.weixin.qq.com (Host::Api): mini programs and official accounts.
/// Mini-program login: a `js_code` for (openid, session_key, unionid).
pub const JSCODE2SESSION: &str = "/sns/jscode2session";
/// An app's access token (`GET`, `grant_type=client_credential`).
pub const TOKEN: &str = "/cgi-bin/token";
/// An app's stable access token (`POST`, `[wechat] stable_token = true`).
pub const STABLE_TOKEN: &str = "/cgi-bin/stable_token";
/// An official account's JS-SDK ticket (`type=jsapi`).
pub const TICKET_GETTICKET: &str = "/cgi-bin/ticket/getticket";

// api.weixin.qq.com (Host::Api): the Open Platform component.
/// The component's own access token, from its secret and verify ticket.
pub const COMPONENT_TOKEN: &str = "/cgi-bin/component/api_component_token";
/// An authoriser's access token, from its refresh token.
pub const AUTHORIZER_TOKEN: &str = "/cgi-bin/component/api_authorizer_token";
/// A pre-auth code for the authorisation page.
pub const CREATE_PREAUTHCODE: &str = "/cgi-bin/component/api_create_preauthcode";
/// An `auth_code` exchanged for the authoriser's tokens.
pub const QUERY_AUTH: &str = "/cgi-bin/component/api_query_auth";
/// An authoriser's profile (`authorizer_info`: nick_name, user_name, principal_name, …).
pub const GET_AUTHORIZER_INFO: &str = "/cgi-bin/component/api_get_authorizer_info";

// api.weixin.qq.com (Host::Api), with an app's access token.
/// A user's phone number, from the `code` of the mini program's `getPhoneNumber`.
pub const GET_USER_PHONE_NUMBER: &str = "/wxa/business/getuserphonenumber";

// qyapi.weixin.qq.com (Host::Work): WeCom.
/// A WeCom agent's access token (`corpid` + the agent's secret).
pub const WORK_GETTOKEN: &str = "/cgi-bin/gettoken";
/// A WeCom corp's JS-SDK ticket.
pub const WORK_GET_JSAPI_TICKET: &str = "/cgi-bin/get_jsapi_ticket";
/// A WeCom agent's JS-SDK ticket (`type=agent_config`).
pub const WORK_TICKET_GET: &str = "/cgi-bin/ticket/get";

// Pages a merchant's browser is sent to (links on the component's authorisation page), not called.
/// WeChat's authorisation page for a component, on a PC.
pub const AUTHORIZE_PAGE: &str = "https://mp.weixin.qq.com/cgi-bin/componentloginpage";
/// WeChat's authorisation page for a component, inside WeChat on a phone.
pub const MOBILE_AUTHORIZE_PAGE: &str = "https://open.weixin.qq.com/wxaopen/safe/bindcomponent";

/// Paths that issue or reset credentials (CONTRACT §9): the gateway never relays them, so no
/// caller can reset a token wafer hosts (or read one it should get from wafer's own routes).
/// Every path wafer fetches a credential from, and `clear_quota`.
pub const CREDENTIAL_PATHS: &[&str] = &[
    TOKEN,
    STABLE_TOKEN,
    TICKET_GETTICKET,
    WORK_GETTOKEN,
    WORK_GET_JSAPI_TICKET,
    WORK_TICKET_GET,
    COMPONENT_TOKEN,
    AUTHORIZER_TOKEN,
    QUERY_AUTH,
    "/cgi-bin/clear_quota",
];
