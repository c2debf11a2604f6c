//! The embedded store: one process, durable on local disk, nothing to install. Backed by redb
//! (a pure-Rust, ACID, copy-on-write B-tree file); every write is one fsynced transaction.
//!
//! Tables: `records` (token hash → encoded [`TokenRecord`]), `ids` (token id → hash),
//! `subjects` ((subject, token id) → ()), `grants` ((grant id, token id) → ()).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::{
    Changed, ListPage, ListQuery, RefreshRefusal, RefreshState, RevokeTarget, SpendOutcome,
    StoreError, StoreFuture, Successors, TokenStore,
};
use crate::record::TokenRecord;
use crate::token::{TokenHash, TokenKind};

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("ids");
const SUBJECTS: TableDefinition<(&str, &str), ()> = TableDefinition::new("subjects");
const GRANTS: TableDefinition<(&str, &str), ()> = TableDefinition::new("grants");

/// The database file's name inside the data directory.
pub const FILE_NAME: &str = "tokens.redb";

/// A token store in one local redb file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
}

/// Why the embedded store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process has the database open.
    #[error(
        "{0} is already open in another navis-auth process (the embedded store is single-process; use --store redis://… for replicas)"
    )]
    Locked(PathBuf),
    /// Any other database error.
    #[error("cannot open {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Box<redb::Error>,
    },
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::unavailable(e.into())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string().into())
}

impl EmbeddedStore {
    /// Opens (or creates) the store in directory `dir`.
    ///
    /// # Errors
    /// When the directory or file cannot be created, or another process holds the file.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        restrict_dir(dir);
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => OpenError::Locked(path.clone()),
            e => OpenError::Db {
                path: path.clone(),
                source: Box::new(e.into()),
            },
        })?;
        let store = EmbeddedStore {
            db: Arc::new(db),
            path,
        };
        store.init_tables().map_err(|e| OpenError::Db {
            path: store.path.clone(),
            source: Box::new(e),
        })?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init_tables(&self) -> Result<(), redb::Error> {
        let tx = self.db.begin_write()?;
        tx.open_table(RECORDS)?;
        tx.open_table(IDS)?;
        tx.open_table(SUBJECTS)?;
        tx.open_table(GRANTS)?;
        tx.commit()?;
        Ok(())
    }

    fn blocking<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(StoreError::unavailable)?
        })
    }

    fn write<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tables<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let out = {
                let mut t = Tables::open(&tx)?;
                f(&mut t)?
            };
            tx.commit().map_err(db_err)?;
            Ok(out)
        })
    }
}

#[cfg(unix)]
fn restrict_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // Records hold no secrets, but subjects and scopes are nobody else's business.
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

#[cfg(not(unix))]
fn restrict_dir(_dir: &Path) {}

/// The tables of one write transaction.
struct Tables<'tx> {
    records: Table<'tx, &'static [u8], &'static [u8]>,
    ids: Table<'tx, &'static str, &'static [u8]>,
    subjects: Table<'tx, (&'static str, &'static str), ()>,
    grants: Table<'tx, (&'static str, &'static str), ()>,
}

impl<'tx> Tables<'tx> {
    fn open(tx: &'tx WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            records: tx.open_table(RECORDS).map_err(db_err)?,
            ids: tx.open_table(IDS).map_err(db_err)?,
            subjects: tx.open_table(SUBJECTS).map_err(db_err)?,
            grants: tx.open_table(GRANTS).map_err(db_err)?,
        })
    }

    fn get(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        match self.records.get(&hash.0[..]).map_err(db_err)? {
            Some(v) => TokenRecord::decode(v.value()).map(Some).map_err(corrupt),
            None => Ok(None),
        }
    }

    fn hash_of(&self, token_id: &str) -> Result<Option<TokenHash>, StoreError> {
        Ok(self
            .ids
            .get(token_id)
            .map_err(db_err)?
            .and_then(|v| TokenHash::from_slice(v.value())))
    }

    fn get_by_id(&self, token_id: &str) -> Result<Option<TokenRecord>, StoreError> {
        match self.hash_of(token_id)? {
            Some(h) => self.get(&h),
            None => Ok(None),
        }
    }

    fn put(&mut self, r: &TokenRecord) -> Result<(), StoreError> {
        self.records
            .insert(&r.hash.0[..], r.encode().as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    fn insert_new(&mut self, r: &TokenRecord) -> Result<(), StoreError> {
        if self.records.get(&r.hash.0[..]).map_err(db_err)?.is_some() {
            return Err(StoreError::Conflict("token hash exists"));
        }
        if self.ids.get(r.token_id.as_str()).map_err(db_err)?.is_some() {
            return Err(StoreError::Conflict("token id exists"));
        }
        self.put(r)?;
        self.ids
            .insert(r.token_id.as_str(), &r.hash.0[..])
            .map_err(db_err)?;
        self.subjects
            .insert((r.subject.as_str(), r.token_id.as_str()), ())
            .map_err(db_err)?;
        if !r.grant_id.is_empty() {
            self.grants
                .insert((r.grant_id.as_str(), r.token_id.as_str()), ())
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// Token ids under `first` in a (first, token id) index.
    fn ids_under(
        table: &Table<'tx, (&'static str, &'static str), ()>,
        first: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for item in table.range((first, "")..).map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            let (f, id) = k.value();
            if f != first {
                break;
            }
            out.push(id.to_owned());
        }
        Ok(out)
    }

    fn revoke_ids(&mut self, ids: &[String], now: i64) -> Result<Vec<Changed>, StoreError> {
        let mut changed = Vec::new();
        for id in ids {
            if let Some(mut r) = self.get_by_id(id)?
                && !r.is_revoked()
                && !r.is_expired(now)
            {
                r.revoked_at = now;
                self.put(&r)?;
                changed.push(Changed {
                    hash: r.hash,
                    token_id: r.token_id,
                });
            }
        }
        Ok(changed)
    }

    fn revoke(&mut self, target: RevokeTarget, now: i64) -> Result<Vec<Changed>, StoreError> {
        let ids = match target {
            RevokeTarget::Token(h) => self.get(&h)?.map(|r| r.token_id).into_iter().collect(),
            RevokeTarget::TokenId(id) => vec![id],
            RevokeTarget::GrantId(g) => Self::ids_under(&self.grants, &g)?,
            RevokeTarget::Subject(s) => Self::ids_under(&self.subjects, &s)?,
            RevokeTarget::SubjectClient { subject, client_id } => {
                let mut ids = Vec::new();
                for id in Self::ids_under(&self.subjects, &subject)? {
                    if self
                        .get_by_id(&id)?
                        .is_some_and(|r| r.client_id == client_id)
                    {
                        ids.push(id);
                    }
                }
                ids
            }
        };
        self.revoke_ids(&ids, now)
    }
}

impl TokenStore for EmbeddedStore {
    fn get(&self, hash: TokenHash) -> StoreFuture<'_, Option<TokenRecord>> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let t = tx.open_table(RECORDS).map_err(db_err)?;
            match t.get(&hash.0[..]).map_err(db_err)? {
                Some(v) => TokenRecord::decode(v.value()).map(Some).map_err(corrupt),
                None => Ok(None),
            }
        })
    }

    fn get_by_id(&self, token_id: String) -> StoreFuture<'_, Option<TokenRecord>> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let ids = tx.open_table(IDS).map_err(db_err)?;
            let Some(hash) = ids
                .get(token_id.as_str())
                .map_err(db_err)?
                .and_then(|v| TokenHash::from_slice(v.value()))
            else {
                return Ok(None);
            };
            let t = tx.open_table(RECORDS).map_err(db_err)?;
            match t.get(&hash.0[..]).map_err(db_err)? {
                Some(v) => TokenRecord::decode(v.value()).map(Some).map_err(corrupt),
                None => Ok(None),
            }
        })
    }

    fn insert(&self, records: Vec<TokenRecord>) -> StoreFuture<'_, ()> {
        self.write(move |t| records.iter().try_for_each(|r| t.insert_new(r)))
    }

    fn rotate(
        &self,
        old_id: String,
        old_expires_at: i64,
        new: TokenRecord,
        now: i64,
    ) -> StoreFuture<'_, Option<TokenRecord>> {
        self.write(move |t| {
            let Some(old) = t.get_by_id(&old_id)? else {
                return Ok(None);
            };
            if old.kind != TokenKind::ApiKey || !old.is_active(now) {
                return Ok(None);
            }
            let mut updated = old.clone();
            updated.expires_at = match old.expires_at {
                0 => old_expires_at,
                e => e.min(old_expires_at),
            };
            t.put(&updated)?;
            t.insert_new(&new)?;
            Ok(Some(old))
        })
    }

    fn spend_refresh(
        &self,
        hash: TokenHash,
        now: i64,
        successors: Successors,
    ) -> StoreFuture<'_, SpendOutcome> {
        self.write(move |t| {
            let Some(mut old) = t.get(&hash)? else {
                return Ok(SpendOutcome::Refused(RefreshRefusal::Unknown));
            };
            match RefreshState::of(&old, now) {
                RefreshState::Usable => {}
                RefreshState::Refused(r) => return Ok(SpendOutcome::Refused(r)),
                RefreshState::Reused => {
                    let revoked = t.revoke(RevokeTarget::GrantId(old.grant_id.clone()), now)?;
                    return Ok(SpendOutcome::Reused { revoked });
                }
            }
            let issued = match successors(&old) {
                Ok(v) => v,
                Err(refusal) => return Ok(SpendOutcome::Refused(refusal)),
            };
            old.spent_at = now;
            t.put(&old)?;
            for r in &issued {
                t.insert_new(r)?;
            }
            Ok(SpendOutcome::Spent {
                old: Box::new(old),
                issued,
            })
        })
    }

    fn revoke(&self, target: RevokeTarget, now: i64) -> StoreFuture<'_, Vec<Changed>> {
        self.write(move |t| t.revoke(target, now))
    }

    fn list(&self, q: ListQuery) -> StoreFuture<'_, ListPage> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let subjects = tx.open_table(SUBJECTS).map_err(db_err)?;
            let ids = tx.open_table(IDS).map_err(db_err)?;
            let records = tx.open_table(RECORDS).map_err(db_err)?;
            let start = q.after.clone().unwrap_or_default();
            let mut page = ListPage::default();
            for item in subjects
                .range((q.subject.as_str(), start.as_str())..)
                .map_err(db_err)?
            {
                let (k, _) = item.map_err(db_err)?;
                let (subject, id) = k.value();
                if subject != q.subject {
                    break;
                }
                if q.after.as_deref() == Some(id) {
                    continue;
                }
                let Some(hash) = ids
                    .get(id)
                    .map_err(db_err)?
                    .and_then(|v| TokenHash::from_slice(v.value()))
                else {
                    continue;
                };
                let Some(v) = records.get(&hash.0[..]).map_err(db_err)? else {
                    continue;
                };
                let r = TokenRecord::decode(v.value()).map_err(corrupt)?;
                if q.matches(&r) && !page.offer(r, q.limit) {
                    break;
                }
            }
            Ok(page)
        })
    }

    fn touch(&self, used: Vec<(TokenHash, i64)>) -> StoreFuture<'_, ()> {
        self.write(move |t| {
            for (hash, at) in used {
                if let Some(mut r) = t.get(&hash)?
                    && at > r.last_used_at
                {
                    r.last_used_at = at;
                    t.put(&r)?;
                }
            }
            Ok(())
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.blocking(|db| {
            db.begin_read().map_err(db_err)?;
            Ok(())
        })
    }
}
