//! Errors as HTTP answers: `application/problem+json` (RFC 9457) with a stable `code`, the
//! field at fault where there is one, and `Retry-After` on a 429.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code.
    pub code: &'static str,
    /// What happened, for a person.
    pub detail: String,
    /// The request field at fault (`limits.memory_mib`, `items[3]`, …).
    pub field: Option<String>,
    /// Seconds to wait before trying again (429).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    code: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// An error of `status` with `code` and `detail`.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    /// Names the field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 404: nothing of that id for this tenant (whether or not another tenant has one).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    /// 422 for `field`.
    pub fn invalid(code: &'static str, field: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail).field(field)
    }

    /// 429, to try again after `seconds`.
    pub fn too_many(code: &'static str, detail: impl Into<String>, seconds: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, code, detail);
        e.retry_after = Some(seconds.max(1));
        e
    }

    /// 500 for a failure of the service itself (logged; the detail says little).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the service failed to handle the request",
        )
    }
}

impl From<crate::error::ServeError> for ApiError {
    fn from(e: crate::error::ServeError) -> Self {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("error");
        let body = serde_json::to_vec(&Problem {
            kind: "about:blank",
            title,
            status: self.status.as_u16(),
            code: self.code,
            detail: &self.detail,
            field: self.field.as_deref(),
        })
        .unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wasmpool\""),
            );
        }
        response
    }
}

/// Parses a JSON body into `T`, naming the field at fault: malformed JSON is 400
/// (`malformed_json`), a wrong type, a missing or an unknown field 422 (`invalid_field`).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.to_string();
            if inner.classify() != serde_json::error::Category::Data {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    format!("the body is not valid JSON: {message}"),
                ));
            }
            let field = field_of(&path, &message);
            Err(ApiError::invalid(
                "invalid_field",
                &field,
                format!("{field}: {message}"),
            ))
        }
    }
}

/// The field a serde error is about: the path, with the name an unknown or missing field
/// error quotes added to it.
fn field_of(path: &str, message: &str) -> String {
    let quoted = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    let base = if path == "." { "" } else { path };
    match quoted {
        Some(name) if !base.ends_with(name) => {
            if base.is_empty() {
                name.to_string()
            } else {
                format!("{base}.{name}")
            }
        }
        _ if base.is_empty() => "(body)".to_string(),
        _ => base.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        memory_mib: Option<u64>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        module: String,
        limits: Option<Inner>,
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_json::<Outer>(br#"{"module": 3}"#).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.field.as_deref()),
            (422, Some("module"))
        );
        let e =
            parse_json::<Outer>(br#"{"module": "m", "limits": {"memory_mib": "x"}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limits.memory_mib"));
        let e = parse_json::<Outer>(br#"{"module": "m", "limits": {"memry": 1}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limits.memry"));
        let e = parse_json::<Outer>(br#"{"modul": "m"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("modul"));
        let e = parse_json::<Outer>(br#"{}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("module"));
        let e = parse_json::<Outer>(br#"{"module": "#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "malformed_json"));
    }
}
