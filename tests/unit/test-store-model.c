/* The store against a model of the remote: random sequences of changes, delta sets built from
 * them the way Graph reports them (changed items with their new parent, tombstones with or
 * without the descendants', duplicates, any order, now and then a full set to reconcile), work
 * published in part between sets (a cancel), and publishes of work a later set superseded.
 * After each sequence every queued work is published, and the mount's tree must equal the
 * model's: same paths, same kinds, every file holding the bytes of its latest version.
 *
 * The fixed seeds make a failure repeatable: the failing seed is in the message. */
#include "config.h"

#include "test-store-util.h"

typedef struct {
  char    *id;
  char    *parent;   /* NULL for the source folder */
  char    *name;
  gboolean dir;
  guint    version;  /* content version of a file */
  gboolean alive;
} Node;

typedef struct {
  GRand      *rand;
  GHashTable *nodes;   /* id → Node* */
  GPtrArray  *order;   /* Node*, creation order: random picks are repeatable */
  guint       next_id;
  guint       seed;
} Model;

static void
node_free (Node *n)
{
  g_free (n->id);
  g_free (n->parent);
  g_free (n->name);
  g_free (n);
}

static Node *
model_add (Model *m, const char *parent, const char *name, gboolean dir)
{
  Node *n = g_new0 (Node, 1);
  n->id = parent ? g_strdup_printf ("i%u", m->next_id++) : g_strdup ("R");
  n->parent = g_strdup (parent);
  n->name = g_strdup (name);
  n->dir = dir;
  n->version = 1;
  n->alive = TRUE;
  g_hash_table_insert (m->nodes, n->id, n);
  g_ptr_array_add (m->order, n);
  return n;
}

static char *
qxh_of (const Node *n)
{
  return g_strdup_printf ("h-%s-%u", n->id, n->version);
}

static GraphItem *
item_of (const Node *n)
{
  if (n->parent == NULL)
    return mk_dir ("R", "P", "Docs");
  if (n->dir)
    return mk_dir (n->id, n->parent, n->name);
  g_autofree char *h = qxh_of (n);
  return mk_file (n->id, n->parent, n->name, h);
}

static gboolean
name_taken (Model *m, const char *parent, const char *name)
{
  for (guint i = 0; i < m->order->len; i++)
    {
      Node *n = m->order->pdata[i];
      if (n->alive && g_strcmp0 (n->parent, parent) == 0 && g_strcmp0 (n->name, name) == 0)
        return TRUE;
    }
  return FALSE;
}

static Node *
pick (Model *m, gint want_dir /* -1 either */, gboolean allow_root)
{
  g_autoptr (GPtrArray) c = g_ptr_array_new ();
  for (guint i = 0; i < m->order->len; i++)
    {
      Node *n = m->order->pdata[i];
      if (n->alive && (want_dir < 0 || n->dir == (gboolean) want_dir) && (allow_root || n->parent))
        g_ptr_array_add (c, n);
    }
  return c->len ? c->pdata[g_rand_int_range (m->rand, 0, (gint32) c->len)] : NULL;
}

static gboolean
is_within (Model *m, const Node *n, const Node *ancestor)
{
  for (const Node *p = n; p != NULL; p = p->parent ? g_hash_table_lookup (m->nodes, p->parent) : NULL)
    if (p == ancestor)
      return TRUE;
  return FALSE;
}

static char *
fresh_name (Model *m, const char *parent, const char *stem)
{
  /* A small name space, so names are reused after deletes and moves; when it is full, a name
   * nobody had. */
  for (guint tries = 0; tries < 12; tries++)
    {
      char *name = g_strdup_printf ("%s%d", stem, g_rand_int_range (m->rand, 0, 6));
      if (!name_taken (m, parent, name))
        return name;
      g_free (name);
    }
  return g_strdup_printf ("%s-%u", stem, m->next_id++);
}

/* One random change; what it touched goes into @changed (ids), deletions into @gone. */
static void
model_change (Model *m, GHashTable *changed, GPtrArray *gone)
{
  switch (g_rand_int_range (m->rand, 0, 8))
    {
    case 0:
    case 1: /* a new file */
      {
        Node *dir = pick (m, TRUE, TRUE);
        g_autofree char *name = fresh_name (m, dir->id, "f");
        g_hash_table_add (changed, model_add (m, dir->id, name, FALSE)->id);
        break;
      }
    case 2: /* a new folder */
      {
        Node *dir = pick (m, TRUE, TRUE);
        g_autofree char *name = fresh_name (m, dir->id, "d");
        g_hash_table_add (changed, model_add (m, dir->id, name, TRUE)->id);
        break;
      }
    case 3: /* new content */
      {
        Node *f = pick (m, FALSE, FALSE);
        if (f)
          {
            f->version++;
            g_hash_table_add (changed, f->id);
          }
        break;
      }
    case 4: /* a rename */
      {
        Node *n = pick (m, -1, FALSE);
        if (n)
          {
            char *name = fresh_name (m, n->parent, n->dir ? "d" : "f");
            g_free (n->name);
            n->name = name;
            g_hash_table_add (changed, n->id);
          }
        break;
      }
    case 5: /* a move, never into itself */
      {
        Node *n = pick (m, -1, FALSE), *to = pick (m, TRUE, TRUE);
        if (n && to && !is_within (m, to, n) && g_strcmp0 (n->parent, to->id) != 0
            && !name_taken (m, to->id, n->name))
          {
            g_free (n->parent);
            n->parent = g_strdup (to->id);
            g_hash_table_add (changed, n->id);
          }
        break;
      }
    default: /* a delete: a file, or a folder with all it holds */
      {
        Node *n = pick (m, -1, FALSE);
        if (n == NULL)
          break;
        for (guint i = 0; i < m->order->len; i++)
          {
            Node *d = m->order->pdata[i];
            if (d->alive && is_within (m, d, n))
              {
                d->alive = FALSE;
                g_ptr_array_add (gone, d);
              }
          }
        break;
      }
    }
}

/* The delta set of one round, as Graph may report it. */
static GPtrArray *
model_set (Model *m, GHashTable *changed, GPtrArray *gone, gboolean full)
{
  GPtrArray *set = items_new ();
  gboolean child_tombstones = g_rand_boolean (m->rand);
  for (guint i = 0; i < m->order->len; i++)
    {
      Node *n = m->order->pdata[i];
      if (n->alive && (full || g_hash_table_contains (changed, n->id)))
        g_ptr_array_add (set, item_of (n));
    }
  for (guint i = 0; !full && i < gone->len; i++)
    {
      Node *n = gone->pdata[i];
      Node *parent = g_hash_table_lookup (m->nodes, n->parent);
      /* Without child tombstones only the top of a deleted subtree is reported, and what in it
       * changed since the last set (its change was never reported, so it is now reported as
       * gone): the client cascades to the rest, which it knows in place. */
      if (!child_tombstones && parent && !parent->alive && !g_hash_table_contains (changed, n->id))
        continue;
      g_ptr_array_add (set, mk_tombstone (n->id, n->parent));
    }
  /* Duplicates: an item reported twice in one set (across pages, as the service may). */
  guint dups = set->len ? (guint) g_rand_int_range (m->rand, 0, 3) : 0;
  for (guint k = 0; k < dups; k++)
    {
      const GraphItem *it = set->pdata[g_rand_int_range (m->rand, 0, (gint32) set->len)];
      if (!it->deleted)
        g_ptr_array_add (set, item_of (g_hash_table_lookup (m->nodes, it->id)));
    }
  /* Any order: children before parents, tombstones before or after. */
  for (guint i = set->len; i > 1; i--)
    {
      guint j = (guint) g_rand_int_range (m->rand, 0, (gint32) i);
      gpointer t = set->pdata[i - 1];
      set->pdata[i - 1] = set->pdata[j];
      set->pdata[j] = t;
    }
  return set;
}

static void
commit (Fixture *f, gint64 sid, GPtrArray *set, guint round, gboolean reconcile, const Model *m)
{
  GError *error = NULL;
  StoreCommitStats stats;
  g_assert_true (store_stage_begin (f->store, sid, &error));
  for (guint i = 0; i < set->len; i += 3)
    {
      g_autoptr (GPtrArray) page = g_ptr_array_new ();
      for (guint k = i; k < MIN (i + 3, set->len); k++)
        g_ptr_array_add (page, set->pdata[k]);
      if (!store_stage_add (f->store, sid, page, &error))
        g_error ("seed %u round %u: stage: %s", m->seed, round, error->message);
    }
  g_autofree char *link = g_strdup_printf ("link-%u", round);
  if (!store_stage_commit (f->store, sid, link, reconcile, &stats, &error))
    g_error ("seed %u round %u: commit: %s", m->seed, round, error->message);
  g_ptr_array_unref (set);
}



/* The mount's tree below @ino as "path kind object" lines, sorted. */
static void
mount_tree (Fixture *f, guint64 ino, const char *path, GPtrArray *out, guint depth)
{
  g_assert_cmpuint (depth, <, 64);
  GError *error = NULL;
  g_autoptr (GPtrArray) list = store_readdir (f->store, ino, &error);
  g_assert_no_error (error);
  for (guint i = 0; i < list->len; i++)
    {
      StoreEntry *e = list->pdata[i];
      g_autofree char *p = g_strdup_printf ("%s/%s", path, e->name);
      if (e->kind == STORE_KIND_DIR)
        {
          g_ptr_array_add (out, g_strdup_printf ("%s dir", p));
          mount_tree (f, e->ino, p, out, depth + 1);
        }
      else
        g_ptr_array_add (out, g_strdup_printf ("%s file %s", p, e->cache_object ? e->cache_object : "(none)"));
    }
}

static char *
model_path (Model *m, const Node *n)
{
  if (n->parent == NULL)
    return g_strdup ("/Docs");
  g_autofree char *up = model_path (m, g_hash_table_lookup (m->nodes, n->parent));
  return g_strdup_printf ("%s/%s", up, n->name);
}

static int
cmp_str (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

static char *
joined (GPtrArray *lines)
{
  g_ptr_array_sort (lines, cmp_str);
  GString *s = g_string_new (NULL);
  for (guint i = 0; i < lines->len; i++)
    g_string_append_printf (s, "%s\n", (const char *) lines->pdata[i]);
  return g_string_free (s, FALSE);
}

static void
run_sequence (guint seed)
{
  Fixture fx = { 0 }, *f = &fx;
  fixture_set_up (f, NULL);
  Model m = { g_rand_new_with_seed (seed), g_hash_table_new (g_str_hash, g_str_equal),
              g_ptr_array_new_with_free_func ((GDestroyNotify) node_free), 0, seed };
  GError *error = NULL;
  gint64 sid = 0;
  g_assert_true (store_source_ensure (f->store, "/Docs", "drive1", "R", &sid, &error));
  g_assert_no_error (error);

  model_add (&m, NULL, "Docs", TRUE);
  g_autoptr (GPtrArray) held = NULL;   /* work taken before a later commit superseded some */
  for (guint round = 0; round < 14; round++)
    {
      g_autoptr (GHashTable) changed = g_hash_table_new (g_str_hash, g_str_equal);
      g_autoptr (GPtrArray) gone = g_ptr_array_new ();
      guint changes = round == 0 ? 8 : (guint) g_rand_int_range (m.rand, 1, 7);
      for (guint k = 0; k < changes; k++)
        model_change (&m, changed, gone);
      if (round == 0)
        g_hash_table_add (changed, "R");
      gboolean full = round > 0 && g_rand_int_range (m.rand, 0, 5) == 0;
      commit (f, sid, model_set (&m, changed, gone, full), round, full, &m);

      /* Work taken before this commit, published now: what a slow worker does. */
      for (guint i = 0; held && i < held->len; i++)
        publish (f, held->pdata[i], NULL);
      g_clear_pointer (&held, g_ptr_array_unref);

      /* Then part of the queue, in order (a cancel), and perhaps some held for later. */
      g_autoptr (GPtrArray) work = take_work (f);
      guint upto = work->len ? (guint) g_rand_int_range (m.rand, 0, (gint32) work->len + 1) : 0;
      for (guint i = 0; i < upto; i++)
        publish (f, work->pdata[i], NULL);
      if (upto < work->len && g_rand_boolean (m.rand))
        {
          held = g_ptr_array_new_with_free_func ((GDestroyNotify) store_work_free);
          for (guint i = upto; i < work->len; i++)
            g_ptr_array_add (held, g_steal_pointer (&work->pdata[i]));
        }
    }
  for (guint i = 0; held && i < held->len; i++)
    publish (f, held->pdata[i], NULL);
  /* Drain: a publish can make room for what follows, so until the queue is empty. */
  for (guint pass = 0;; pass++)
    {
      g_assert_cmpuint (pass, <, 4);
      g_autoptr (GPtrArray) work = take_work (f);
      if (work->len == 0)
        break;
      for (guint i = 0; i < work->len; i++)
        publish (f, work->pdata[i], NULL);
    }

  g_autoptr (GPtrArray) want = g_ptr_array_new_with_free_func (g_free);
  for (guint i = 0; i < m.order->len; i++)
    {
      Node *n = m.order->pdata[i];
      if (!n->alive || n->parent == NULL)
        continue;
      g_autofree char *p = model_path (&m, n);
      g_autofree char *h = qxh_of (n);
      g_ptr_array_add (want, n->dir ? g_strdup_printf ("%s dir", p)
                                    : g_strdup_printf ("%s file obj-%s-%s", p, n->id, h));
    }
  g_autoptr (GPtrArray) have = g_ptr_array_new_with_free_func (g_free);
  guint64 docs = 0;
  {
    g_auto (StoreEntry) e = { 0 };
    g_assert_true (store_lookup (f->store, STORE_ROOT_INO, "Docs", &e, &error));
    docs = e.ino;
  }
  mount_tree (f, docs, "/Docs", have, 0);
  g_autofree char *w = joined (want), *h = joined (have);
  if (strcmp (w, h) != 0)
    g_error ("seed %u: the mount differs from the remote.\nremote:\n%smount:\n%s", seed, w, h);

  g_rand_free (m.rand);
  g_hash_table_unref (m.nodes);
  g_ptr_array_unref (m.order);
  fixture_tear_down (f, NULL);
}

static void
test_random_sequences (void)
{
  guint seeds = g_test_slow () ? 2000 : 150;
  for (guint seed = 1; seed <= seeds; seed++)
    run_sequence (seed);
}

static void
quiet (const char *domain, GLogLevelFlags level, const char *message, gpointer data)
{
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  /* Thousands of commits: their per-step timings would bury a failure's message. */
  g_log_set_handler ("odsf-store", G_LOG_LEVEL_DEBUG | G_LOG_LEVEL_INFO, quiet, NULL);
  g_test_add_func ("/store/model/random-sequences", test_random_sequences);
  return g_test_run ();
}
