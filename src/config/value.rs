//! The leaves of a configuration file: durations as human strings, switches that take `"off"`
//! (a stage, a timeout, a breaker's rule), the words of a few settings, status codes, the map
//! of host policies, the Redis URL.
//!
//! Each has a visitor of its own rather than serde's derived one, for two reasons: the error
//! says what to write (`write its unit, like "30s"`), and it never echoes the value it
//! refused, which could be a secret put in the wrong place.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

/// The most host policies a configuration may hold: each builds a pipeline of its own.
pub(crate) const MAX_HOST_POLICIES: usize = 1_000;

/// What a duration looks like, for errors.
const DURATION: &str = "a duration with its unit, like \"250ms\", \"30s\" or \"1m 30s\"";

/// A duration written as a human string: `"250ms"`, `"30s"`, `"1m 30s"`, `"2h"`.
///
/// Parsed by `humantime`: units `ns`, `us`/`µs`, `ms`, `s`/`sec`, `m`/`min`, `h`/`hours`,
/// `d`/`days`, `w`/`weeks`, `M`/`months` (30.44 days), `y`/`years` (365.25 days), summed when
/// several are given. A bare number is refused: `30` could mean seconds or milliseconds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Human(pub(crate) Duration);

impl fmt::Debug for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Human {
    fn parse<E: de::Error>(text: &str) -> Result<Human, E> {
        humantime::parse_duration(text.trim())
            .map(Human)
            .map_err(|e| E::custom(format_args!("is not a duration ({e}): write {DURATION}")))
    }

    fn bare_number<E: de::Error>(n: &dyn fmt::Display) -> E {
        E::custom(format_args!(
            "`{n}` has no unit: write {DURATION} (\"{n}s\", \"{n}ms\"…)"
        ))
    }
}

impl<'de> Deserialize<'de> for Human {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Human;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Human, E> {
                Human::parse(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Human, E> {
                Err(Human::bare_number(&v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Human, E> {
                Err(Human::bare_number(&v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Human, E> {
                Err(Human::bare_number(&v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A setting that can be left out (the default: the builder's, or the client's in a host
/// policy), switched off with `"off"`, or given.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) enum Toggle<T> {
    /// Left out.
    #[default]
    Unset,
    /// `"off"`.
    Off,
    /// Given.
    On(T),
}

/// What can stand in a [`Toggle`]: a table of settings (a stage), a duration (a timeout), or a
/// number (a breaker's rule).
pub(crate) trait Switchable: Sized {
    /// What a value looks like, for errors.
    const EXPECTING: &'static str;

    /// The value from text other than `"off"`.
    fn from_text<E: de::Error>(_text: &str) -> Result<Self, E> {
        Err(E::custom(format_args!(
            "expected {}, or \"off\" to switch it off",
            Self::EXPECTING
        )))
    }

    /// The value from a table.
    fn from_map<'de, A: MapAccess<'de>>(_map: A) -> Result<Self, A::Error> {
        Err(de::Error::invalid_type(
            de::Unexpected::Map,
            &format!("{}, or \"off\"", Self::EXPECTING).as_str(),
        ))
    }

    /// The error for a number.
    fn number<E: de::Error>(n: &dyn fmt::Display) -> E {
        let _ = n;
        E::custom(format_args!(
            "expected {}, or \"off\" to switch it off, not a number",
            Self::EXPECTING
        ))
    }

    /// The value from a non-negative whole number (as YAML and JSON give one).
    fn from_u64<E: de::Error>(n: u64) -> Result<Self, E> {
        Err(Self::number(&n))
    }

    /// The value from a whole number that may be negative (TOML gives every one so).
    fn from_i64<E: de::Error>(n: i64) -> Result<Self, E> {
        Err(Self::number(&n))
    }

    /// The value from a number with a fraction (or NaN, or an infinity).
    fn from_f64<E: de::Error>(n: f64) -> Result<Self, E> {
        Err(Self::number(&n))
    }
}

/// A share written as a number (`0.5`, `1`), or `"off"` in a [`Toggle`]: a circuit breaker's
/// `failure_ratio`. Its range is the builder's to check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Share(pub(crate) f64);

impl Switchable for Share {
    const EXPECTING: &'static str = "a number, like 0.5";

    fn from_u64<E: de::Error>(n: u64) -> Result<Self, E> {
        Ok(Share(n as f64))
    }

    fn from_i64<E: de::Error>(n: i64) -> Result<Self, E> {
        Ok(Share(n as f64))
    }

    fn from_f64<E: de::Error>(n: f64) -> Result<Self, E> {
        Ok(Share(n))
    }
}

/// A count written as a whole number from 0 to `u32::MAX`, or `"off"` in a [`Toggle`]: a
/// circuit breaker's `consecutive_failures`. Whether 0 is allowed is the builder's to say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Count(pub(crate) u32);

impl Switchable for Count {
    const EXPECTING: &'static str = "a whole number, like 12";

    fn from_u64<E: de::Error>(n: u64) -> Result<Self, E> {
        u32::try_from(n)
            .map(Count)
            .map_err(|_| E::custom(format_args!("`{n}` is too large: at most {}", u32::MAX)))
    }

    fn from_i64<E: de::Error>(n: i64) -> Result<Self, E> {
        // TOML gives every whole number as an `i64`.
        match u64::try_from(n) {
            Ok(n) => Count::from_u64(n),
            Err(_) => Err(E::custom(format_args!(
                "`{n}` is below zero: expected {}",
                Self::EXPECTING
            ))),
        }
    }

    fn from_f64<E: de::Error>(n: f64) -> Result<Self, E> {
        Err(E::custom(format_args!(
            "`{n}` is not a whole number: expected {}",
            Self::EXPECTING
        )))
    }
}

impl Switchable for Human {
    const EXPECTING: &'static str = DURATION;

    fn from_text<E: de::Error>(text: &str) -> Result<Self, E> {
        Human::parse(text)
    }

    fn number<E: de::Error>(n: &dyn fmt::Display) -> E {
        Human::bare_number(n)
    }
}

/// A stage's table of settings: `[retry]`, `retry = { max_attempts = 5 }`.
macro_rules! section {
    ($($t:ty),* $(,)?) => {$(
        impl crate::config::value::Switchable for $t {
            const EXPECTING: &'static str = "a table of settings";

            fn from_map<'de, A: serde::de::MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
                <$t as serde::Deserialize>::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )
            }
        }
    )*};
}
pub(crate) use section;

impl<'de, T: Switchable> Deserialize<'de> for Toggle<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Switchable> Visitor<'de> for V<T> {
            type Value = Toggle<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}, or \"off\"", T::EXPECTING)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Toggle<T>, E> {
                if v.trim() == "off" {
                    Ok(Toggle::Off)
                } else {
                    T::from_text(v).map(Toggle::On)
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Toggle<T>, A::Error> {
                T::from_map(map).map(Toggle::On)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Toggle<T>, E> {
                Err(E::custom(format_args!(
                    "`{v}` is not a setting: write \"off\" to switch it off, or {} (leave the key out for the default)",
                    T::EXPECTING
                )))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Toggle<T>, E> {
                Err(E::custom(
                    "null is not a setting: write \"off\" to switch it off, or leave the key out for the default",
                ))
            }
            fn visit_none<E: de::Error>(self) -> Result<Toggle<T>, E> {
                self.visit_unit()
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Toggle<T>, E> {
                T::from_u64(v).map(Toggle::On)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Toggle<T>, E> {
                T::from_i64(v).map(Toggle::On)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Toggle<T>, E> {
                T::from_f64(v).map(Toggle::On)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A setting written as one of a few words (`"per_host"`, `"full"`), refused without echoing
/// what was written.
macro_rules! words {
    ($(#[$m:meta])* $name:ident { $($word:literal => $variant:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum $name { $($variant),+ }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("one of" $(, " \"", $word, "\"")+))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        match v {
                            $($word => Ok($name::$variant),)+
                            _ => Err(E::custom(concat!("expected one of" $(, " \"", $word, "\"")+))),
                        }
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

words! {
    /// Whether a stage keeps state per host or once for all.
    Scope { "per_host" => PerHost, "global" => Global }
}

words! {
    /// The backoff's jitter ([`Jitter`](crate::retry::Jitter)).
    JitterName { "full" => Full, "equal" => Equal, "decorrelated" => Decorrelated, "none" => None }
}

impl From<JitterName> for crate::retry::Jitter {
    fn from(j: JitterName) -> Self {
        match j {
            JitterName::Full => crate::retry::Jitter::Full,
            JitterName::Equal => crate::retry::Jitter::Equal,
            JitterName::Decorrelated => crate::retry::Jitter::Decorrelated,
            JitterName::None => crate::retry::Jitter::None,
        }
    }
}

/// An HTTP status code, 100 to 999, written as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Status(pub(crate) http::StatusCode);

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Status;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an HTTP status code, a number from 100 to 999")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Status, E> {
                u16::try_from(v)
                    .ok()
                    .and_then(|v| http::StatusCode::from_u16(v).ok())
                    .map(Status)
                    .ok_or_else(|| {
                        E::custom(format_args!(
                            "`{v}` is not an HTTP status code (100 to 999)"
                        ))
                    })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Status, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format_args!(
                        "`{v}` is not an HTTP status code (100 to 999)"
                    ))),
                }
            }
            fn visit_str<E: de::Error>(self, _v: &str) -> Result<Status, E> {
                Err(E::custom(
                    "expected an HTTP status code written as a number (503, not \"503\")",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

/// The host policies, in the order written (of two equal patterns, the later wins).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Hosts<T>(pub(crate) Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Hosts<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Hosts<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of host patterns, each with its policy")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Hosts<T>, A::Error> {
                let mut hosts: Vec<(String, T)> = Vec::new();
                while let Some(pattern) = map.next_key::<String>()? {
                    if hosts.len() == MAX_HOST_POLICIES {
                        return Err(de::Error::custom(format_args!(
                            "holds more than {MAX_HOST_POLICIES} host policies"
                        )));
                    }
                    if hosts.iter().any(|(p, _)| *p == pattern) {
                        return Err(de::Error::custom(format_args!(
                            "names the host {pattern:?} twice"
                        )));
                    }
                    let policy = map.next_value::<Table<T>>()?.0;
                    hosts.push((pattern, policy));
                }
                Ok(Hosts(hosts))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// A Redis URL: a string, shown without its user and password, never echoed in an error.
#[cfg(feature = "redis")]
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RedisUrl(pub(crate) String);

#[cfg(feature = "redis")]
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::error::scrub(&format!("{:?}", self.0)))
    }
}

#[cfg(feature = "redis")]
impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RedisUrl;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Redis URL, like \"redis://redis.internal:6379/0\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RedisUrl, E> {
                Ok(RedisUrl(v.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

/// Where palisade was built without its `redis` feature: a `redis` table is an error that says
/// so, not an unknown field.
#[cfg(not(feature = "redis"))]
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NeedsRedisFeature;

#[cfg(not(feature = "redis"))]
impl<'de> Deserialize<'de> for NeedsRedisFeature {
    fn deserialize<D: Deserializer<'de>>(_d: D) -> Result<Self, D::Error> {
        Err(de::Error::custom(
            "fleet mode needs palisade's `redis` feature: build palisade with `features = [\"redis\"]`",
        ))
    }
}

/// `fallback_cache` in a host policy: refused with a message that says why.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ClientWide;

impl<'de> Deserialize<'de> for ClientWide {
    fn deserialize<D: Deserializer<'de>>(_d: D) -> Result<Self, D::Error> {
        Err(de::Error::custom(
            "cannot be set per host: the fallback cache is the client's, for every host; set it at the top level",
        ))
    }
}

/// A table of settings, and only a table: serde's derived structs also take a list of values
/// in the order of their fields (`backoff = ["1s", "2s"]`), which no configuration should mean.
#[derive(Clone, PartialEq)]
pub(crate) struct Table<T>(pub(crate) T);

impl<T: fmt::Debug> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Table<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Table<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Table)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}
