/* Tiles: the grid covers the image with the promised overlap; blending unchanged tiles gives back the
 * image exactly; differently repainted tiles cross-fade without a step at the seams. */
#include <stdlib.h>
#include <string.h>

#include "post/tiles.h"
#include "testutil.h"

static void test_grid(void **state) {
  (void)state;
  mp_tile_grid g;
  assert_ok(mp_tile_grid_make(1024, 1536, 512, 512, 64, &g));
  assert_int_equal(g.cols, 3); /* (1024 − 64) / 448 → 3 */
  assert_int_equal(g.rows, 4);
  for (int i = 0; i < g.n; i++) {
    mp_tile *t = &g.tiles[i];
    assert_int_equal(mp_rect_width(t->r), 512);
    assert_true(t->r.x0 >= 0 && t->r.x1 <= 1024 && t->r.y1 <= 1536);
    if (i % g.cols) assert_true(t->feather_left >= 64);
    else assert_int_equal(t->feather_left, 0);
  }
  assert_int_equal(g.tiles[g.n - 1].r.x1, 1024);
  assert_int_equal(g.tiles[g.n - 1].r.y1, 1536);
  assert_int_equal(g.tiles[g.n - 1].feather_right, 0);
  mp_tile_grid_free(&g);
  /* Smaller than a tile: one tile, the image itself. */
  assert_ok(mp_tile_grid_make(300, 200, 512, 512, 64, &g));
  assert_int_equal(g.n, 1);
  assert_int_equal(g.tiles[0].r.x1, 300), assert_int_equal(g.tiles[0].r.y1, 200);
  mp_tile_grid_free(&g);
  assert_err_contains(mp_tile_grid_make(1000, 1000, 512, 512, 300, &g), "overlap");
}

static void test_identity_blend_is_exact(void **state) {
  (void)state;
  mp_image src, tile, out;
  assert_ok(mp_image_alloc(&src, 700, 450, 3));
  for (int i = 0; i < 700 * 450 * 3; i++) src.pixels[i] = (uint8_t)(i * 13 + i / 7);
  mp_tile_grid g;
  assert_ok(mp_tile_grid_make(700, 450, 256, 256, 32, &g));
  mp_tile_canvas c;
  assert_ok(mp_tile_canvas_init(&c, 700, 450, 3));
  for (int i = 0; i < g.n; i++) {
    assert_ok(mp_image_crop(&src, g.tiles[i].r, &tile));
    assert_ok(mp_tile_canvas_add(&c, &tile, &g.tiles[i]));
    mp_image_free(&tile);
  }
  assert_ok(mp_tile_canvas_finish(&c, &out));
  assert_memory_equal(out.pixels, src.pixels, 700 * 450 * 3);
  mp_image_free(&out);
  mp_tile_canvas_free(&c);
  /* A canvas with a hole is refused. */
  assert_ok(mp_tile_canvas_init(&c, 700, 450, 3));
  assert_ok(mp_image_crop(&src, g.tiles[0].r, &tile));
  assert_ok(mp_tile_canvas_add(&c, &tile, &g.tiles[0]));
  assert_err_contains(mp_tile_canvas_finish(&c, &out), "covered by no tile");
  assert_err_contains(mp_tile_canvas_add(&c, &src, &g.tiles[0]), "expected 256x256x3");
  mp_image_free(&tile);
  mp_tile_canvas_free(&c);
  mp_tile_grid_free(&g);
  mp_image_free(&src);
}

static void test_seams_cross_fade(void **state) {
  (void)state;
  /* Every tile repainted a different flat grey: along any row, neighbouring pixels differ by no more
   * than the grey difference spread over the overlap (no hard seam). */
  mp_tile_grid g;
  assert_ok(mp_tile_grid_make(1000, 600, 256, 256, 64, &g));
  mp_tile_canvas c;
  assert_ok(mp_tile_canvas_init(&c, 1000, 600, 1));
  for (int i = 0; i < g.n; i++) {
    mp_image t;
    assert_ok(mp_image_alloc(&t, 256, 256, 1));
    memset(t.pixels, (i * 97) % 200 + 20, 256 * 256);
    assert_ok(mp_tile_canvas_add(&c, &t, &g.tiles[i]));
    mp_image_free(&t);
  }
  mp_image out;
  assert_ok(mp_tile_canvas_finish(&c, &out));
  int worst = 0;
  for (int y = 0; y < 600; y++)
    for (int x = 1; x < 1000; x++) {
      int d = abs(out.pixels[y * 1000 + x] - out.pixels[y * 1000 + x - 1]);
      if (d > worst) worst = d;
    }
  assert_true(worst <= 200 / 64 + 2);
  mp_image_free(&out);
  mp_tile_canvas_free(&c);
  mp_tile_grid_free(&g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_grid),
      cmocka_unit_test(test_identity_blend_is_exact),
      cmocka_unit_test(test_seams_cross_fade),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
