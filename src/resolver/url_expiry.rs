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

/// How long a URL may still be served: `end - now - margin` (zero when it is
/// already inside the margin), or `None` when the URL does not say.
pub fn time_left(url_end_unix: Option<i64>, now_unix: i64, margin: Duration) -> Option<Duration> {
    let end = url_end_unix?;
    let margin_secs = i64::try_from(margin.as_secs()).unwrap_or(i64::MAX);
    let left_secs = end.saturating_sub(now_unix).saturating_sub(margin_secs);
    Some(Duration::from_secs(u64::try_from(left_secs).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn time_left_is_the_url_end_minus_the_margin() {
        assert_eq!(time_left(None, 0, MARGIN), None);
        assert_eq!(
            time_left(Some(1_000), 0, MARGIN),
            Some(Duration::from_secs(940))
        );
        assert_eq!(
            time_left(Some(70), 0, MARGIN),
            Some(Duration::from_secs(10))
        );
        assert_eq!(time_left(Some(50), 0, MARGIN), Some(Duration::ZERO));
        assert_eq!(time_left(Some(-5), 0, MARGIN), Some(Duration::ZERO));
        assert_eq!(
            time_left(Some(i64::MIN), i64::MAX, Duration::MAX),
            Some(Duration::ZERO)
        );
    }

    proptest::proptest! {
        #[test]
        fn the_end_of_any_sign_time_window_is_read(start in 0i64..4_000_000_000, window in 0i64..100_000, key_extra in 0i64..100) {
            let end = start + window;
            let url = format!("https://b.cos.x.myqcloud.com/a/b.zip?q-sign-time={start};{end}&q-key-time={start};{}&q-signature=0", end + key_extra);
            proptest::prop_assert_eq!(url_end_unix(&url), Some(end));
        }

        #[test]
        fn time_left_never_passes_the_url_end_minus_the_margin(end in proptest::option::of(-10_000i64..10_000), now in -10_000i64..10_000, margin in 0u64..1_000) {
            let margin = Duration::from_secs(margin);
            match (end, time_left(end, now, margin)) {
                (None, left) => proptest::prop_assert_eq!(left, None),
                (Some(end), Some(left)) => proptest::prop_assert!(now + left.as_secs() as i64 <= (end - margin.as_secs() as i64).max(now)),
                (Some(_), None) => proptest::prop_assert!(false, "a URL with an end has a time left"),
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = url_end_unix(&text);
        }
    }
}
