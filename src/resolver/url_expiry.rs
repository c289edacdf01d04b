//! When a presigned package URL stops working, read from its own query string.

use std::time::Duration;

/// The Unix second at which `url` stops working, if it says so: the earliest
/// end of `q-sign-time` / `q-key-time` (`<start>;<end>`) and `Expires=<unix>`.
pub fn url_end_unix(url: &str) -> Option<i64> {
    let parsed = url::Url::parse(url).ok()?;
    parsed
        .query_pairs()
        .filter_map(|(name, value)| {
            if name.eq_ignore_ascii_case("q-sign-time") || name.eq_ignore_ascii_case("q-key-time") {
                value.split_once(';')?.1.trim().parse::<i64>().ok()
            } else if name.eq_ignore_ascii_case("expires") {
                value.trim().parse::<i64>().ok()
            } else {
                None
            }
        })
        .min()
}

/// How long a URL may be served: `min(ttl, end - now - margin)`, zero when
/// it is already inside the margin, `ttl` when the URL does not say.
pub fn servable_for(
    url_end_unix: Option<i64>,
    now_unix: i64,
    ttl: Duration,
    margin: Duration,
) -> Duration {
    match url_end_unix {
        None => ttl,
        Some(end) => {
            let left_secs = end
                .saturating_sub(now_unix)
                .saturating_sub(margin.as_secs().min(i64::MAX as u64) as i64);
            ttl.min(Duration::from_secs(left_secs.max(0) as u64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(300);
    const MARGIN: Duration = Duration::from_secs(60);

    #[test]
    fn cos_sign_time_end_is_read() {
        let url = "https://b.cos.ap-singapore.myqcloud.com/p.zip?q-sign-algorithm=sha1&q-ak=AK&q-sign-time=1700000000;1700000600&q-key-time=1700000000;1700000600&q-signature=ab";
        assert_eq!(url_end_unix(url), Some(1_700_000_600));
    }

    #[test]
    fn url_encoded_semicolons_and_expires_are_read() {
        assert_eq!(url_end_unix("https://x/p?q-sign-time=1%3B200"), Some(200));
        assert_eq!(url_end_unix("https://x/p?Expires=1234"), Some(1234));
        assert_eq!(
            url_end_unix("https://x/p?q-key-time=1;900&Expires=500"),
            Some(500)
        );
        assert_eq!(url_end_unix("https://x/p?a=b"), None);
        assert_eq!(url_end_unix("not a url"), None);
    }

    #[test]
    fn lifetime_is_the_shorter_of_ttl_and_url_end_minus_margin() {
        assert_eq!(servable_for(None, 0, TTL, MARGIN), TTL);
        assert_eq!(servable_for(Some(1_000), 0, TTL, MARGIN), TTL);
        assert_eq!(
            servable_for(Some(70), 0, TTL, MARGIN),
            Duration::from_secs(10)
        );
        assert_eq!(servable_for(Some(50), 0, TTL, MARGIN), Duration::ZERO);
        assert_eq!(servable_for(Some(-5), 0, TTL, MARGIN), Duration::ZERO);
    }
}
