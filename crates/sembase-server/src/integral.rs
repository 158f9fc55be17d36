//! Integer fields of request bodies (`dimensions`, `top_k`, `top_n`, ...), read with
//! `#[serde(deserialize_with = "integral::value")]` (or `integral::option`). Besides
//! JSON integers they take a float with no fractional part: JavaScript clients send
//! `10.0` for 10, and JSON Schema (our `/openapi.json`) counts it as an integer too.
//! `10.5`, negative numbers and numbers past the field's type are still refused.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A required integer field.
pub(crate) fn value<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    Integral::deserialize(deserializer).map(|Integral(v)| v)
}

/// An optional integer field (`null` is none); give it `#[serde(default)]` too.
pub(crate) fn option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    Option::<Integral<T>>::deserialize(deserializer).map(|v| v.map(|Integral(v)| v))
}

/// A non-negative integer that fits `T`, written as an integer or an integral float.
struct Integral<T>(T);

impl<'de, T: TryFrom<u64>> Deserialize<'de> for Integral<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IntegralVisitor(PhantomData))
    }
}

struct IntegralVisitor<T>(PhantomData<T>);

impl<T: TryFrom<u64>> Visitor<'_> for IntegralVisitor<T> {
    type Value = Integral<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a non-negative integer")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Integral<T>, E> {
        T::try_from(v)
            .map(Integral)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Integral<T>, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Integral<T>, E> {
        // 2^64 is the first float past u64 (`u64::MAX as f64` rounds up to it).
        if v.fract() == 0.0 && v >= 0.0 && v < u64::MAX as f64 {
            self.visit_u64(v as u64)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(deserialize_with = "super::value")]
        count: u32,
        #[serde(default, deserialize_with = "super::option")]
        limit: Option<usize>,
    }

    fn parse(json: &str) -> Result<Body, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn integers_and_integral_floats_are_taken() {
        for (json, count, limit) in [
            (r#"{"count": 10}"#, 10, None),
            (r#"{"count": 10.0, "limit": 384.0}"#, 10, Some(384)),
            (r#"{"count": 1e2, "limit": null}"#, 100, None),
            (r#"{"count": -0.0, "limit": 0}"#, 0, Some(0)),
        ] {
            let body = parse(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!((body.count, body.limit), (count, limit), "{json}");
        }
    }

    #[test]
    fn fractions_negatives_and_numbers_past_the_type_are_refused() {
        for json in [
            r#"{"count": 10.5}"#,
            r#"{"count": -1}"#,
            r#"{"count": -1.0}"#,
            r#"{"count": 4294967296}"#,
            r#"{"count": 4294967296.0}"#,
            r#"{"count": 1, "limit": 18446744073709551616}"#,
            r#"{"count": 1, "limit": 1e300}"#,
            r#"{"count": "10"}"#,
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.to_string().contains("expected a non-negative integer"), "{json}: {e}");
        }
    }
}
