//! The variant names of a wire enum, in declaration order — the index of each is the number
//! postcard puts on the wire. Read from the type itself: serde's derive hands the list of an
//! enum's variants to `Deserializer::deserialize_enum`, and [`VariantNames`] is a deserializer
//! that only records it. Documentation checks use it, so a variant added to the code and not
//! to the pages that list every variant fails a test.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

/// The variants of `T`, in declaration order (index = position); `None` if `T` is not
/// deserialized as an enum.
pub fn variant_names<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    let mut names = None;
    // It always fails: it only records the names it is handed.
    let _ = T::deserialize(VariantNames(&mut names));
    names
}

/// A deserializer that records the variant names of the enum it is asked for, and fails.
struct VariantNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for VariantNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only an enum's variant names are read"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(variants);
        Err(de::Error::custom("variant names recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_in_declaration_order() {
        let names = variant_names::<crate::Request>().unwrap_or_default();
        assert_eq!(names.first(), Some(&"Hello"));
        assert!(names.contains(&"AssociateAt"), "{names:?}");
        assert_eq!(variant_names::<u32>(), None);
    }
}
