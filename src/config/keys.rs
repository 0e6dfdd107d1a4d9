//! Every key the fleet file accepts, read off the schema's serde derives (for the docs test: each must be documented).
//!
//! A tracing [`serde::Deserializer`] is handed to [`FleetFile::deserialize`]: each `deserialize_struct` it is
//! asked for records the struct's `fields` (the names serde accepts, renames applied) under the table path it was
//! reached by, then yields every field once so the walk recurses into each field's type (through `Option`,
//! `Vec`, and the values of maps keyed by user names such as regions or instance types). Nothing is kept by hand:
//! a field added to a schema struct is a key here.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::schema::FleetFile;

/// One key of the fleet file: `table` is the dotted path of the table it is in (`""` for a top-level table,
/// `flavor`, `limits.api`, `ssh.bastion`; a `[[array]]` or a map's values share the table's path), `key` its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AcceptedKey {
    pub table: String,
    pub key: String,
}

impl fmt::Display for AcceptedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.table.is_empty() {
            write!(f, "[{}]", self.key)
        } else {
            write!(f, "{}.{}", self.table, self.key)
        }
    }
}

/// Every key the fleet file's schema accepts, sorted (tables themselves included, under `""`).
pub fn accepted_keys() -> Vec<AcceptedKey> {
    let found = RefCell::new(BTreeSet::new());
    // The walk yields every field of every struct, so the derives never miss one; an error here is a schema
    // type the tracer cannot walk (an enum, say), and must be taught, not skipped.
    if let Err(error) = FleetFile::deserialize(Tracer { found: &found, path: String::new() }) {
        panic!("the fleet file's schema could not be walked: {error}");
    }
    // `[variables]`' entries are free-form values to serde (validation reads them): their keys from the list
    // validation takes.
    let mut found = found.into_inner();
    for key in super::schema::VARIABLE_KEYS {
        found.insert(AcceptedKey { table: "variables".to_owned(), key: (*key).to_owned() });
    }
    found.into_iter().collect()
}

#[derive(Debug)]
struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        TraceError(message.to_string())
    }
}

/// Answers every request with the simplest value of its kind; records structs' fields.
struct Tracer<'a> {
    found: &'a RefCell<BTreeSet<AcceptedKey>>,
    path: String,
}

macro_rules! answer {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de> Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    answer! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i8(0), deserialize_i16 => visit_i16(0), deserialize_i32 => visit_i32(0),
        deserialize_i64 => visit_i64(0), deserialize_u8 => visit_u8(0), deserialize_u16 => visit_u16(0),
        deserialize_u32 => visit_u32(0), deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f32(0.0), deserialize_f64 => visit_f64(0.0),
        deserialize_char => visit_char('x'), deserialize_str => visit_str(""), deserialize_string => visit_str(""),
        deserialize_bytes => visit_bytes(&[]), deserialize_byte_buf => visit_bytes(&[]),
        deserialize_unit => visit_unit(), deserialize_identifier => visit_str(""),
        deserialize_ignored_any => visit_unit(),
    }

    /// A value of any shape (`[variables]`' free-form values, `[publish] accounts`): a boolean, which both take.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_bool(false)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_newtype_struct(self)
    }

    /// One element, of the same table (a `[[flavor]]`'s keys are `flavor`'s).
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_seq(OneElement { tracer: Some(self) })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    /// A map keyed by names the user picks (regions, instance types): one entry, its value in the same table.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_map(OneEntry { tracer: Some(self) })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let mut found = self.found.borrow_mut();
        for field in fields {
            found.insert(AcceptedKey { table: self.path.clone(), key: (*field).to_owned() });
        }
        drop(found);
        visitor.visit_map(EveryField { tracer: self, fields, next: 0 })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, TraceError> {
        Err(TraceError(format!("`{name}` at `{}` is an enum: teach config::keys to walk it", self.path)))
    }
}

/// A struct's fields, each once, each value walked under `path.field`.
struct EveryField<'a> {
    tracer: Tracer<'a>,
    fields: &'static [&'static str],
    next: usize,
}

impl<'de, 'a> MapAccess<'de> for EveryField<'a> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, TraceError> {
        match self.fields.get(self.next) {
            Some(field) => seed.deserialize((*field).into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TraceError> {
        let field = self.fields[self.next];
        self.next += 1;
        let path = if self.tracer.path.is_empty() { field.to_owned() } else { format!("{}.{field}", self.tracer.path) };
        seed.deserialize(Tracer { found: self.tracer.found, path })
    }
}

/// A map of one entry: a key no schema names, its value walked in the map's own table.
struct OneEntry<'a> {
    tracer: Option<Tracer<'a>>,
}

impl<'de, 'a> MapAccess<'de> for OneEntry<'a> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, TraceError> {
        match self.tracer {
            Some(_) => seed.deserialize("name".into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TraceError> {
        let tracer = self.tracer.take().ok_or_else(|| TraceError("a map's value asked for twice".into()))?;
        seed.deserialize(tracer)
    }
}

/// A sequence of one element, walked in the sequence's own table.
struct OneElement<'a> {
    tracer: Option<Tracer<'a>>,
}

impl<'de, 'a> SeqAccess<'de> for OneElement<'a> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, TraceError> {
        match self.tracer.take() {
            Some(tracer) => seed.deserialize(tracer).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(keys: &[AcceptedKey], table: &str, key: &str) -> bool {
        keys.iter().any(|found| found.table == table && found.key == key)
    }

    #[test]
    fn the_walk_finds_tables_nested_tables_arrays_and_renamed_keys() {
        let keys = accepted_keys();
        // Top-level tables, renamed ones under their TOML name.
        assert!(has(&keys, "", "fleet") && has(&keys, "", "flavor") && has(&keys, "", "distribution"));
        assert!(!has(&keys, "", "flavors"), "the field's Rust name is not a key");
        // Through Option, Vec (`[[flavor]]`, provisioners), and a rename (`type`).
        assert!(has(&keys, "flavor", "source_ami") && has(&keys, "flavor.source_ami", "ssm_parameter"));
        assert!(has(&keys, "flavor.provisioners", "type") && has(&keys, "flavor.provisioners", "expect_disconnect"));
        assert!(has(&keys, "defaults.root_volume", "type") && !has(&keys, "defaults.root_volume", "volume_type"));
        // Two levels of optional tables, and the values of a map keyed by instance type.
        assert!(has(&keys, "limits.api.copy_image", "per_second"));
        assert!(has(&keys, "prices", "on_demand") && has(&keys, "sim.prices", "spot"));
        assert!(has(&keys, "ssh.bastion", "known_hosts") && has(&keys, "sim.faults", "answer_lost"));
        // A free-form table has no keys of its own; `[variables]`' entries have the keys validation takes.
        assert!(!keys.iter().any(|key| key.table == "regions"));
        let variables: Vec<&str> =
            keys.iter().filter(|key| key.table == "variables").map(|key| key.key.as_str()).collect();
        assert_eq!(variables, ["default", "description", "sensitive"]);
    }
}
