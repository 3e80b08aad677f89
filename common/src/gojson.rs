//! JSON decoding with the matching rules of Go's `encoding/json`, for everything a runtime or
//! an operator writes: the plugin config, the IPAM section, `runtimeConfig`, `args` and
//! `prevResult`.
//!
//! Go runtimes marshal structs that carry no JSON tags under their Go field names (containerd
//! sends `{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}` and
//! `{"IngressRate":..,"IngressBurst":..}`), and the reference plugins read them because Go's
//! decoder matches keys case-insensitively. [`from_value`] decodes any `Deserialize` type the
//! same way:
//!
//! - an object key names a struct field by its exact name first, then by an ASCII
//!   case-insensitive match; when the object also has the exact key, the exact one wins;
//! - keys that name no field are ignored (unless the type denies unknown fields);
//! - a `null` member of a struct leaves the field as if it were absent (its default);
//! - maps (`HashMap`, `serde_json::Map`) keep their keys as written, as Go's maps do.
//!
//! Types that use `#[serde(flatten)]` are decoded by serde through its own buffer, which
//! matches keys exactly: decode the flattened parts from the same value instead.

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};
use serde_json::{Error, Map, Value};

/// Decodes `value` into `T` with Go's key matching (see the module documentation).
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, Error> {
    T::deserialize(GoValue(value))
}

/// The member of `object` that Go would decode into a field named `key`: the exact key if
/// present, else the last key equal to it without regard to ASCII case. `None` when
/// `object` is not an object or has no such member.
pub fn get<'a>(object: &'a Value, key: &str) -> Option<&'a Value> {
    let map = object.as_object()?;
    map.get(key).or_else(|| {
        map.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
            .next_back()
    })
}

/// A borrowed JSON value that deserializes with Go's rules.
#[derive(Clone, Copy)]
struct GoValue<'a>(&'a Value);

/// Scalars decode exactly as serde_json decodes them.
macro_rules! forward_to_value {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
            self.0.$method(visitor)
        }
    )*};
}

impl<'a> de::Deserializer<'a> for GoValue<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => visitor.visit_seq(GoSeq(items.iter())),
            Value::Object(map) => visitor.visit_map(GoMap::new(map, None)),
            Value::String(s) => visitor.visit_borrowed_str(s),
            scalar => scalar.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => visitor.visit_seq(GoSeq(items.iter())),
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'a>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(GoMap::new(map, None)),
            other => other.deserialize_map(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(GoMap::new(map, Some(fields))),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    forward_to_value! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf deserialize_unit
        deserialize_identifier
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_unit_struct(name, visitor)
    }
}

struct GoSeq<'a>(std::slice::Iter<'a, Value>);

impl<'a> de::SeqAccess<'a> for GoSeq<'a> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'a>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(GoValue(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

/// An object's members with their keys resolved: for a struct, each key renamed to the
/// field it names and `null` members dropped; for a map, as written.
struct GoMap<'a> {
    members: std::vec::IntoIter<(&'a str, &'a Value)>,
    value: Option<&'a Value>,
}

impl<'a> GoMap<'a> {
    fn new(map: &'a Map<String, Value>, fields: Option<&'static [&'static str]>) -> GoMap<'a> {
        let Some(fields) = fields else {
            let members: Vec<_> = map.iter().map(|(k, v)| (k.as_str(), v)).collect();
            return GoMap {
                members: members.into_iter(),
                value: None,
            };
        };
        let mut members: Vec<(&'a str, &'a Value)> = Vec::with_capacity(map.len());
        for (key, value) in map {
            if value.is_null() {
                continue;
            }
            let key = key.as_str();
            let name = if fields.contains(&key) {
                key
            } else {
                match fields.iter().find(|f| f.eq_ignore_ascii_case(key)) {
                    // The exact spelling, when present, decides.
                    Some(field) if map.contains_key(*field) => continue,
                    Some(field) => field,
                    None => key,
                }
            };
            // Two spellings of one field: the later one wins, as in Go.
            members.retain(|(k, _)| *k != name);
            members.push((name, value));
        }
        GoMap {
            members: members.into_iter(),
            value: None,
        }
    }
}

impl<'a> de::MapAccess<'a> for GoMap<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.members.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        seed.deserialize(BorrowedStrDeserializer::<Error>::new(key))
            .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'a>>(&mut self, seed: S) -> Result<S::Value, Error> {
        match self.value.take() {
            Some(v) => seed.deserialize(GoValue(v)),
            None => Err(de::Error::custom("a map value was read before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Mapping {
        host_port: i64,
        container_port: i64,
        #[serde(default)]
        protocol: String,
        #[serde(default, rename = "hostIP")]
        host_ip: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Outer {
        #[serde(default)]
        port_mappings: Vec<Mapping>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default = "seven")]
        seven: u32,
        nested: Option<Box<Outer>>,
    }

    fn seven() -> u32 {
        7
    }

    #[test]
    fn go_field_names_decode_like_tagged_ones() {
        let containerd =
            json!({"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""});
        let podman =
            json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""});
        let shouting =
            json!({"HOSTPORT": 8080, "containerport": 80, "PROTOCOL": "tcp", "hostip": ""});
        let want: Mapping = from_value(&podman).unwrap();
        assert_eq!(from_value::<Mapping>(&containerd).unwrap(), want);
        assert_eq!(from_value::<Mapping>(&shouting).unwrap(), want);
        assert_eq!(want.host_port, 8080);
    }

    #[test]
    fn the_exact_key_wins_and_unknown_keys_are_ignored() {
        let v = json!({"HostPort": 1, "hostPort": 2, "containerPort": 3, "Extra": [1, 2]});
        let m: Mapping = from_value(&v).unwrap();
        assert_eq!((m.host_port, m.container_port), (2, 3));
        // Two inexact spellings: one of them, never a duplicate-field error.
        let v = json!({"HOSTPORT": 1, "Hostport": 2, "containerPort": 3});
        let m: Mapping = from_value(&v).unwrap();
        assert!(m.host_port == 1 || m.host_port == 2);
    }

    #[test]
    fn rules_apply_at_every_depth_and_maps_keep_their_keys() {
        let v = json!({
            "PortMappings": [{"HostPort": 1, "ContainerPort": 2}],
            "Labels": {"App": "x", "app": "y"},
            "Nested": {"Seven": 8, "portmappings": null}
        });
        let o: Outer = from_value(&v).unwrap();
        assert_eq!(o.port_mappings[0].container_port, 2);
        assert_eq!(o.labels.len(), 2, "map keys are data, not field names");
        assert_eq!(o.seven, 7);
        let nested = o.nested.unwrap();
        assert_eq!(nested.seven, 8);
        assert!(nested.port_mappings.is_empty(), "null leaves the default");
    }

    #[test]
    fn null_members_leave_defaults_and_wrong_types_still_fail() {
        let o: Outer = from_value(&json!({"seven": null, "portMappings": null})).unwrap();
        assert_eq!(o.seven, 7);
        assert!(from_value::<Outer>(&json!({"Seven": "eight"})).is_err());
        assert!(from_value::<Mapping>(&json!({"HostPort": 1.5, "ContainerPort": 1})).is_err());
        assert!(from_value::<Vec<Mapping>>(&json!({"HostPort": 1})).is_err());
        // Whole values keep every key and null as written.
        let v = json!({"A": null, "b": [1, {"C": true}]});
        assert_eq!(from_value::<Value>(&v).unwrap(), v);
    }

    #[test]
    fn get_prefers_the_exact_key() {
        let v = json!({"IngressRate": 1, "ingressRate": 2, "EgressRate": 3});
        assert_eq!(get(&v, "ingressRate"), Some(&json!(2)));
        assert_eq!(get(&v, "egressRate"), Some(&json!(3)));
        assert_eq!(get(&v, "egressBurst"), None);
        assert_eq!(get(&json!([1]), "x"), None);
    }
}
