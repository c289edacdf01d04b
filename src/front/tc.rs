//! The Tencent-Cloud-compatible shape: `POST /` with `X-TC-Action`, answered in upstream's envelope.
//!
//! The client's `Authorization`, `X-TC-Timestamp` and `X-TC-Token` are never
//! read: the gateway signs every upstream call with its own credentials.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, Method, StatusCode};
use hyper::body::Body;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::AppState;
use super::{
    client_region, json_response, push_json_string, read_body, wants_revalidation, GatewayResponse,
    RequestLog,
};
use crate::domain::{Action, MnpId, PackageKey, PlatformId, RequestId};
use crate::error::GatewayError;
use crate::resolver::{CacheStatus, Lookup, Served};

/// `X-TC-Action`.
static X_TC_ACTION: HeaderName = HeaderName::from_static("x-tc-action");

/// Handles `POST /`.
pub async fn handle<B>(
    state: &Arc<AppState>,
    request: &Parts,
    body: B,
    request_id: &RequestId,
    received: Instant,
) -> (GatewayResponse, RequestLog)
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut log = RequestLog::new("tc");
    let lookup = match parse(state, request, body, request_id, received, &mut log).await {
        Ok(lookup) => lookup,
        Err(e) => return (error_response(&e, request_id.as_str(), &mut log), log),
    };
    let resolution = state.resolver.resolve(lookup).await;
    log.cache = Some(resolution.cache);
    log.upstream_ms = resolution.upstream_ms;
    let response = match resolution.outcome {
        Ok(served) => {
            let answer_id = served
                .upstream_request_id
                .as_deref()
                .unwrap_or(request_id.as_str());
            json_response(StatusCode::OK, url_body(&served, answer_id))
        }
        Err(e) => {
            let answer_id = e
                .upstream_request_id()
                .filter(|_| resolution.cache == CacheStatus::Miss && !resolution.coalesced)
                .unwrap_or(request_id.as_str());
            error_response(&e, answer_id, &mut log)
        }
    };
    (response, log)
}

/// Answers a refused client in the envelope (`AuthFailure.UnauthorizedOperation`).
pub fn refuse(e: &GatewayError, request_id: &str) -> (GatewayResponse, RequestLog) {
    let mut log = RequestLog::new("tc");
    let response = error_response(e, request_id, &mut log);
    (response, log)
}

/// Parses method, action, region and body into a lookup; nothing invalid gets past.
async fn parse<B>(
    state: &AppState,
    request: &Parts,
    body: B,
    request_id: &RequestId,
    received: Instant,
    log: &mut RequestLog,
) -> Result<Lookup, GatewayError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if request.method != Method::POST {
        return Err(GatewayError::MethodNotAllowed(
            "the Tencent Cloud API shape takes POST / with a JSON body".to_owned(),
        ));
    }
    let action_name = request
        .headers
        .get(&X_TC_ACTION)
        .ok_or(GatewayError::MissingParameter("X-TC-Action"))?
        .to_str()
        .map_err(|_| GatewayError::InvalidAction("X-TC-Action is not ASCII".to_owned()))?;
    let action = Action::from_tc_name(action_name)?;
    log.action = Some(action);
    let region = client_region(&request.headers)?;
    let revalidate = wants_revalidation(&request.headers);
    let body = read_body(&request.headers, body, state.settings.server.max_body_bytes).await?;
    let (platform_id, mnp_id) = parse_body(&body)?;
    let key = PackageKey {
        action,
        platform_id,
        mnp_id,
    };
    log.key = Some(key.clone());
    Ok(Lookup {
        key,
        region,
        revalidate,
        received,
        deadline: super::deadline(state, received),
        request_id: request_id.clone(),
    })
}

/// The body's two parameters, borrowed from the request bytes: a typed parse
/// that allocates nothing for the usual body (measured in BENCHMARKS.md).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcBody<'a> {
    #[serde(rename = "PlatformId", borrow, default)]
    platform_id: Option<&'a RawValue>,
    #[serde(rename = "MNPId", borrow, default)]
    mnp_id: Option<&'a RawValue>,
}

/// The usual body in one typed pass: both parameters borrowed strings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcStrings<'a> {
    #[serde(rename = "PlatformId", borrow, default)]
    platform_id: Option<Cow<'a, str>>,
    #[serde(rename = "MNPId", borrow, default)]
    mnp_id: Option<Cow<'a, str>>,
}

/// Parses `{"MNPId": "...", "PlatformId": "..."}`.
pub fn parse_body(body: &[u8]) -> Result<(PlatformId, MnpId), GatewayError> {
    // One pass for a well-formed body; anything it refuses is parsed again
    // below, field by field, for an error that names the bad parameter.
    if let Ok(TcStrings {
        platform_id: Some(platform_id),
        mnp_id: Some(mnp_id),
    }) = serde_json::from_slice(body)
    {
        if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return Ok((PlatformId::parse(&platform_id)?, MnpId::parse(&mnp_id)?));
        }
    }
    explain_body(body)
}

/// The slow path of `parse_body`: which parameter is missing, of the wrong
/// type or unknown.
fn explain_body(body: &[u8]) -> Result<(PlatformId, MnpId), GatewayError> {
    // serde would also read a struct from a JSON array: only objects are bodies.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(GatewayError::InvalidParameter(
            "request body must be a JSON object of PlatformId and MNPId".to_owned(),
        ));
    }
    let fields: TcBody<'_> = serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        match text
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
        {
            Some((name, _)) => {
                GatewayError::UnknownParameter(crate::domain::truncate_for_message(name))
            }
            None if e.is_data() => GatewayError::InvalidParameter(
                "request body must be a JSON object of PlatformId and MNPId".to_owned(),
            ),
            None => GatewayError::InvalidParameter(format!("request body is not valid JSON: {e}")),
        }
    })?;
    let text = |name: &'static str, raw: Option<&RawValue>| -> Result<Cow<'_, str>, GatewayError> {
        let raw = match raw {
            None => return Err(GatewayError::MissingParameter(name)),
            Some(raw) if raw.get() == "null" => return Err(GatewayError::MissingParameter(name)),
            Some(raw) => raw,
        };
        serde_json::from_str::<Cow<'_, str>>(raw.get())
            .map_err(|_| GatewayError::InvalidParameter(format!("{name} must be a string")))
    };
    let platform_id = PlatformId::parse(&text(PlatformId::PARAM, fields.platform_id)?)?;
    let mnp_id = MnpId::parse(&text(MnpId::PARAM, fields.mnp_id)?)?;
    Ok((platform_id, mnp_id))
}

/// `{"Response":{"Data":{"Data":<url>},"RequestId":<id>}}`, in one allocation.
pub fn url_body(served: &Served, request_id: &str) -> Bytes {
    envelope(
        served.url_json_len(),
        |body| served.write_url_json(body),
        request_id,
    )
}

/// The success envelope around a URL JSON literal that `write_url` appends.
fn envelope(url_json_len: usize, write_url: impl FnOnce(&mut Vec<u8>), request_id: &str) -> Bytes {
    const HEAD: &[u8] = br#"{"Response":{"Data":{"Data":"#;
    const MID: &[u8] = br#"},"RequestId":"#;
    let mut body = Vec::with_capacity(HEAD.len() + url_json_len + MID.len() + request_id.len() + 8);
    body.extend_from_slice(HEAD);
    write_url(&mut body);
    body.extend_from_slice(MID);
    push_json_string(&mut body, request_id);
    body.extend_from_slice(b"}}");
    Bytes::from(body)
}

/// An error in the envelope: HTTP 200, `Response.Error.{Code,Message}`.
fn error_response(e: &GatewayError, request_id: &str, log: &mut RequestLog) -> GatewayResponse {
    log.failed(e);
    let body = serde_json::json!({
        "Response": {
            "Error": {"Code": e.tc_code(), "Message": e.message()},
            "RequestId": request_id,
        }
    });
    json_response(StatusCode::OK, Bytes::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_parsing_names_the_bad_parameter() {
        let err = |b: &str| parse_body(b.as_bytes()).unwrap_err().tc_code().to_owned();
        assert_eq!(err(r#"{"MNPId":"m"}"#), "MissingParameter");
        assert_eq!(err(r#"{"MNPId":"m","PlatformId":""}"#), "MissingParameter");
        assert_eq!(err(r#"{"MNPId":1,"PlatformId":"p"}"#), "InvalidParameter");
        assert_eq!(
            err(r#"{"MNPId":"m","PlatformId":"p","X":1}"#),
            "UnknownParameter"
        );
        assert_eq!(err("{"), "InvalidParameter");
        assert_eq!(err("[]"), "InvalidParameter");
        assert!(parse_body(br#"{"MNPId":"m","PlatformId":"p"}"#).is_ok());
    }

    fn outcome(r: Result<(PlatformId, MnpId), GatewayError>) -> Result<String, String> {
        r.map(|(p, m)| format!("{p}/{m}"))
            .map_err(|e| format!("{} {}", e.tc_code(), e.message()))
    }

    proptest::proptest! {
        #[test]
        fn the_fast_parse_agrees_with_the_explaining_one(
            body in r#"[ ]?\{("(MNPId|PlatformId|X)":("[a-z\\"-]{0,5}"|null|1|\[\]),?){0,3}\}|\[("[a-z]{0,3}",?){0,2}\]"#
        ) {
            proptest::prop_assert_eq!(
                outcome(parse_body(body.as_bytes())),
                outcome(explain_body(body.as_bytes()))
            );
        }
    }

    #[test]
    fn url_body_is_the_upstream_envelope() {
        let url = br#""https://x/a?b=1&c=2""#;
        let body = envelope(url.len(), |b| b.extend_from_slice(url), "rid-1");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["Response"]["Data"]["Data"], "https://x/a?b=1&c=2");
        assert_eq!(v["Response"]["RequestId"], "rid-1");
    }
}
