//! `string_newtype!`: small named string types (regions, flavor names, EC2 resource ids) instead of bare
//! `String`s, each with `new`, `as_str`, `Display` and transparent serde. `secret_newtype!`: secret text (a
//! private key, a session token) that only `expose` gives out: no `Display`, no serde, `Debug` redacted.

macro_rules! string_newtype {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                $name(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

macro_rules! secret_newtype {
    ($($(#[$doc:meta])* $name:ident => $shown:literal),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            pub fn new(text: String) -> Self {
                $name(text.into())
            }

            pub fn expose(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($shown)
            }
        }
    )*};
}
