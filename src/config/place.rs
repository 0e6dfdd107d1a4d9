//! Where in AWS: a [`Place`] is a region of an [`Account`]. Everything keyed by "where" (request buckets,
//! waits, copy semaphores, the journal's resources, job labels, the manifest, the simulated model) is keyed by
//! a place, so copies into other accounts can land without re-keying any of them.
//!
//! Layer: `config`, the vocabulary every layer speaks (beside [`Region`]). Today every place is of the run's
//! own account ([`Account::Own`]); on disk a place of the own account is written exactly as its region name,
//! so the journal and the manifest keep their format.

use std::fmt;

use super::Region;

/// Whose region.
///
/// [`Account::Own`] is the account the run acts as (after any role was assumed) when its id is not known or
/// does not matter: in `validate` and `plan`, before `GetCallerIdentity`, and wherever the run only ever
/// touches its own account. [`Account::Id`] names an account by its 12-digit id; nothing makes one yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Account {
    /// The account the run acts as.
    #[default]
    Own,
    /// An account named by its id (`123456789012`).
    Id(String),
}

impl Account {
    pub fn is_own(&self) -> bool {
        matches!(self, Account::Own)
    }
}

/// Written as the account's id; the own account as `null` (fields holding one are skipped for it, so files
/// about the own account keep their shape: see [`Account::is_own`]).
impl serde::Serialize for Account {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Account::Own => serializer.serialize_none(),
            Account::Id(id) => serializer.serialize_str(id),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Account {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Option::<String>::deserialize(deserializer)?.map_or(Account::Own, Account::Id))
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::Own => f.write_str("own account"),
            Account::Id(id) => f.write_str(id),
        }
    }
}

/// A region of one account: where in AWS a call goes, a resource lives, an image is copied to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    pub account: Account,
    pub region: Region,
}

impl Place {
    /// A region of the run's own account: every place today.
    pub fn own(region: Region) -> Self {
        Place { account: Account::Own, region }
    }

    pub fn region(&self) -> &Region {
        &self.region
    }
}

impl From<Region> for Place {
    fn from(region: Region) -> Self {
        Place::own(region)
    }
}

impl From<&Region> for Place {
    fn from(region: &Region) -> Self {
        Place::own(region.clone())
    }
}

/// The own account's places read as their region (`us-west-2`), as every label, log line and file shows them
/// today; another account's as `account/region`.
impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.account {
            Account::Own => write!(f, "{}", self.region),
            Account::Id(id) => write!(f, "{id}/{}", self.region),
        }
    }
}

/// Written as the region name alone for the own account, so the journal's and the manifest's formats do not
/// change; another account's place as `account/region`.
impl serde::Serialize for Place {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Place {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.split_once('/') {
            Some((account, region)) => Place { account: Account::Id(account.to_owned()), region: Region::new(region) },
            None => Place::own(Region::new(text)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_of_the_own_account_is_written_as_its_region() {
        let place = Place::own(Region::new("us-west-2"));
        assert_eq!(place.to_string(), "us-west-2");
        assert_eq!(serde_json::to_string(&place).unwrap(), r#""us-west-2""#);
        assert_eq!(serde_json::from_str::<Place>(r#""us-west-2""#).unwrap(), place);
        assert_eq!(Place::from(Region::new("us-west-2")), place);
    }

    #[test]
    fn another_accounts_place_names_the_account() {
        let place = Place { account: Account::Id("123456789012".into()), region: Region::new("eu-west-1") };
        assert_eq!(place.to_string(), "123456789012/eu-west-1");
        let json = serde_json::to_string(&place).unwrap();
        assert_eq!(serde_json::from_str::<Place>(&json).unwrap(), place);
        assert!(!place.account.is_own());
    }

    #[test]
    fn an_account_is_written_as_its_id_and_the_own_account_as_null() {
        let account = Account::Id("222233334444".into());
        assert_eq!(serde_json::to_string(&account).unwrap(), r#""222233334444""#);
        assert_eq!(serde_json::from_str::<Account>(r#""222233334444""#).unwrap(), account);
        assert_eq!(serde_json::to_string(&Account::Own).unwrap(), "null");
        assert_eq!(serde_json::from_str::<Account>("null").unwrap(), Account::Own);
    }

    #[test]
    fn places_order_by_account_then_region() {
        let own = |region: &str| Place::own(Region::new(region));
        let other = Place { account: Account::Id("1".into()), region: Region::new("af-south-1") };
        let mut places = vec![other.clone(), own("us-west-2"), own("eu-west-1")];
        places.sort();
        assert_eq!(places, [own("eu-west-1"), own("us-west-2"), other], "the own account's places first");
    }
}
