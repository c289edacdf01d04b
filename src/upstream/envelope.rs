//! Classifies an upstream answer by its body: a URL, an API error, or not the envelope at all.

use serde::Deserialize;

use crate::error::ApiError;

/// What a 200 answer from Tencent Cloud said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamAnswer {
    /// `Response.Data.Data`: the package URL.
    Url {
        /// The presigned package URL.
        url: String,
        /// `Response.RequestId`.
        request_id: Option<String>,
    },
    /// `Response.Error`.
    ApiError(ApiError),
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Response")]
    response: ResponseBody,
}

#[derive(Deserialize)]
struct ResponseBody {
    #[serde(rename = "Error")]
    error: Option<ErrorBody>,
    #[serde(rename = "Data")]
    data: Option<DataBody>,
    #[serde(rename = "RequestId")]
    request_id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "Code")]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

#[derive(Deserialize)]
struct DataBody {
    #[serde(rename = "Data")]
    data: Option<String>,
}

/// Parses an upstream body. `Err` carries a short reason for a body that is
/// not the envelope (which counts as a transport failure).
pub fn parse_answer(body: &[u8]) -> Result<UpstreamAnswer, String> {
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|e| format!("upstream body is not the Tencent Cloud envelope: {e}"))?;
    let response = envelope.response;
    if let Some(error) = response.error {
        return Ok(UpstreamAnswer::ApiError(ApiError {
            code: error.code,
            message: error.message,
            request_id: response.request_id,
        }));
    }
    match response.data.and_then(|d| d.data) {
        Some(url) if !url.is_empty() => Ok(UpstreamAnswer::Url {
            url,
            request_id: response.request_id,
        }),
        _ => Err("upstream envelope has neither Error nor Data.Data".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_answer_is_read() {
        let a = parse_answer(br#"{"Response":{"Data":{"Data":"https://x/y"},"RequestId":"r1"}}"#);
        assert_eq!(
            a,
            Ok(UpstreamAnswer::Url {
                url: "https://x/y".into(),
                request_id: Some("r1".into())
            })
        );
    }

    #[test]
    fn an_error_answer_is_read() {
        let a = parse_answer(
            br#"{"Response":{"Error":{"Code":"FailedOperation.PackageAlreadyExpired","Message":"gone"},"RequestId":"r2"}}"#,
        )
        .unwrap();
        match a {
            UpstreamAnswer::ApiError(e) => {
                assert_eq!(e.code, "FailedOperation.PackageAlreadyExpired");
                assert_eq!(e.request_id.as_deref(), Some("r2"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn anything_else_is_a_transport_failure() {
        for body in [
            &b"<html>"[..],
            b"{}",
            br#"{"Response":{}}"#,
            br#"{"Response":{"Data":{}}}"#,
        ] {
            assert!(parse_answer(body).is_err());
        }
    }
}
