//! `GatewayError`: every failure the gateway answers, with its Tencent Cloud code and HTTP status.

use std::time::Duration;

use http::StatusCode;

/// An API error as Tencent Cloud answered it (`Response.Error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// `Response.Error.Code`, e.g. `FailedOperation.PackageAlreadyExpired`.
    pub code: String,
    /// `Response.Error.Message`.
    pub message: String,
    /// `Response.RequestId` of the upstream answer, when it had one.
    pub request_id: Option<String>,
}

/// Upstream business code: the mini program has no online version.
pub const CODE_NOT_EXIST: &str = "FailedOperation.MNPOnlineVersionNotExist";
/// Upstream business code: the package URL has expired.
pub const CODE_PACKAGE_EXPIRED: &str = "FailedOperation.PackageAlreadyExpired";

impl ApiError {
    /// True for `RequestLimitExceeded` and its sub-codes.
    pub fn is_rate_limited(&self) -> bool {
        self.code == "RequestLimitExceeded" || self.code.starts_with("RequestLimitExceeded.")
    }
}

/// Every error the gateway answers a downstream client with.
#[derive(Clone, Debug, thiserror::Error)]
pub enum GatewayError {
    /// A required parameter is absent or empty.
    #[error("missing parameter {0}")]
    MissingParameter(&'static str),
    /// A parameter or the body is malformed.
    #[error("{0}")]
    InvalidParameter(String),
    /// The body carries a parameter this action does not take.
    #[error("unknown parameter {0}")]
    UnknownParameter(String),
    /// `X-TC-Action` is missing or not one the gateway serves.
    #[error("{0}")]
    InvalidAction(String),
    /// The request body is larger than `server.max_body_bytes`.
    #[error("request body exceeds {limit_bytes} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit_bytes: usize,
    },
    /// No such route (REST) or HTTP method (either shape).
    #[error("{0}")]
    NotFound(String),
    /// The method is not served on this route.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// No upstream rate slot could be had before the request's deadline.
    #[error("upstream rate budget exhausted, retry after {} s", retry_after.as_secs().max(1))]
    RateBudgetExhausted {
        /// When the client may try again.
        retry_after: Duration,
    },
    /// Tencent Cloud answered with an API error.
    #[error("{}", .0.message)]
    Upstream(ApiError),
    /// Upstream could not be reached or did not answer with the API envelope.
    #[error("upstream request failed: {0}")]
    UpstreamTransport(String),
    /// Upstream did not answer within the time allowed.
    #[error("upstream did not answer within {timeout_ms} ms")]
    UpstreamTimeout {
        /// How long the gateway waited.
        timeout_ms: u64,
    },
    /// The gateway is not ready to call upstream (e.g. no credentials).
    #[error("{0}")]
    NotReady(String),
    /// The client did not present a valid token.
    #[error("{0}")]
    Unauthorized(String),
    /// The client's address is not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// A fault inside the gateway itself.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// The Tencent Cloud error code for the TC-compatible front.
    pub fn tc_code(&self) -> &str {
        match self {
            GatewayError::MissingParameter(_) => "MissingParameter",
            GatewayError::InvalidParameter(_) => "InvalidParameter",
            GatewayError::UnknownParameter(_) => "UnknownParameter",
            GatewayError::InvalidAction(_) => "InvalidAction",
            GatewayError::BodyTooLarge { .. } => "RequestSizeLimitExceeded",
            GatewayError::NotFound(_) => "ResourceNotFound",
            GatewayError::MethodNotAllowed(_) => "UnsupportedProtocol",
            GatewayError::RateBudgetExhausted { .. } => "RequestLimitExceeded",
            GatewayError::Upstream(api) => &api.code,
            GatewayError::UpstreamTransport(_) | GatewayError::UpstreamTimeout { .. } => {
                "ServiceUnavailable"
            }
            GatewayError::NotReady(_) => "ServiceUnavailable",
            GatewayError::Unauthorized(_) | GatewayError::Forbidden(_) => {
                "AuthFailure.UnauthorizedOperation"
            }
            GatewayError::Internal(_) => "InternalError",
        }
    }

    /// The HTTP status for the REST front.
    pub fn rest_status(&self) -> StatusCode {
        match self {
            GatewayError::MissingParameter(_)
            | GatewayError::InvalidParameter(_)
            | GatewayError::UnknownParameter(_)
            | GatewayError::InvalidAction(_) => StatusCode::BAD_REQUEST,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::RateBudgetExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Upstream(api) => match api.code.as_str() {
                CODE_NOT_EXIST => StatusCode::NOT_FOUND,
                CODE_PACKAGE_EXPIRED => StatusCode::GONE,
                _ => StatusCode::BAD_GATEWAY,
            },
            GatewayError::UpstreamTransport(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// How long a client should wait before retrying, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::RateBudgetExhausted { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// Upstream's `RequestId`, for errors that came from an upstream answer.
    pub fn upstream_request_id(&self) -> Option<&str> {
        match self {
            GatewayError::Upstream(api) => api.request_id.as_deref(),
            _ => None,
        }
    }

    /// Worth another attempt upstream: transport failures, timeouts,
    /// `InternalError*`, `ServiceUnavailable*` and `RequestLimitExceeded*`.
    pub fn is_retryable(&self) -> bool {
        let code_is = |code: &str, family: &str| {
            code == family
                || code
                    .strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        match self {
            GatewayError::UpstreamTransport(_) | GatewayError::UpstreamTimeout { .. } => true,
            GatewayError::Upstream(api) => {
                api.is_rate_limited()
                    || code_is(&api.code, "InternalError")
                    || code_is(&api.code, "ServiceUnavailable")
            }
            _ => false,
        }
    }

    /// A failure during which an old URL may still be served (stale-if-error):
    /// the retryable ones, plus the gateway's own budget running out or its
    /// credentials lapsing.
    pub fn allows_stale(&self) -> bool {
        self.is_retryable()
            || matches!(
                self,
                GatewayError::RateBudgetExhausted { .. } | GatewayError::NotReady(_)
            )
    }

    /// The error message as sent to clients.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: &str) -> GatewayError {
        GatewayError::Upstream(ApiError {
            code: code.to_owned(),
            message: "m".to_owned(),
            request_id: None,
        })
    }

    #[test]
    fn upstream_codes_map_to_rest_statuses() {
        assert_eq!(api(CODE_NOT_EXIST).rest_status(), StatusCode::NOT_FOUND);
        assert_eq!(api(CODE_PACKAGE_EXPIRED).rest_status(), StatusCode::GONE);
        assert_eq!(api("InternalError").rest_status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            api("AuthFailure.SignatureFailure").tc_code(),
            "AuthFailure.SignatureFailure"
        );
    }

    #[test]
    fn retryable_failures_are_told_apart() {
        assert!(api("InternalError").is_retryable());
        assert!(api("InternalError.DbError").is_retryable());
        assert!(api("RequestLimitExceeded.UinLimitExceeded").is_retryable());
        assert!(api("ServiceUnavailable").is_retryable());
        assert!(!api("InternalErrorX").is_retryable());
        assert!(!api(CODE_PACKAGE_EXPIRED).is_retryable());
        assert!(!api("AuthFailure.SignatureFailure").is_retryable());
        assert!(GatewayError::UpstreamTransport("reset".into()).is_retryable());
        assert!(!GatewayError::InvalidParameter("x".into()).allows_stale());
    }

    #[test]
    fn budget_exhaustion_is_a_429_with_retry_after() {
        let e = GatewayError::RateBudgetExhausted {
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(e.tc_code(), "RequestLimitExceeded");
        assert_eq!(e.rest_status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    }
}
