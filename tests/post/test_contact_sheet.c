/* Contact sheet: layout (common height, aspect kept, margins), image content in place, captions drawn
 * in the caption strip only, and the built-in font's glyphs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "post/contact_sheet.h"
#include "testutil.h"

static void solid(mp_image *img, int w, int h, int ch, uint8_t v) {
  assert_ok(mp_image_alloc(img, w, h, ch));
  memset(img->pixels, v, (size_t)w * h * ch);
}

static const uint8_t *px(const mp_image *img, int x, int y) { return img->pixels + ((size_t)y * img->width + x) * 3; }

static void test_layout_and_content(void **state) {
  (void)state;
  mp_image a, b, m, sheet;
  solid(&a, 200, 100, 3, 200); /* 2:1 */
  solid(&b, 50, 100, 3, 90);   /* 1:2 */
  solid(&m, 64, 64, 1, 255);   /* a gray mask */
  mp_sheet_item items[] = {{&a, "pass 1"}, {&b, "person 1 after"}, {&m, "mask"}};
  assert_ok(mp_contact_sheet(items, 3, 80, &sheet));
  /* widths 160, 40, 80 at height 80, 8 px margins */
  assert_int_equal(sheet.width, 8 + 160 + 8 + 40 + 8 + 80 + 8);
  assert_int_equal(sheet.channels, 3);
  assert_memory_equal(px(&sheet, 8, 8), ((uint8_t[]){200, 200, 200}), 3);
  assert_memory_equal(px(&sheet, 8 + 159, 8 + 79), ((uint8_t[]){200, 200, 200}), 3);
  assert_memory_equal(px(&sheet, 176 + 20, 8 + 40), ((uint8_t[]){90, 90, 90}), 3);
  assert_memory_equal(px(&sheet, 224 + 40, 8 + 40), ((uint8_t[]){255, 255, 255}), 3);
  assert_memory_equal(px(&sheet, 170, 50), ((uint8_t[]){28, 28, 30}), 3); /* margin between */
  /* Ink appears in each caption strip and nowhere above the images' bottom edge except the images. */
  for (int i = 0; i < 3; i++) {
    int x0 = (int[]){8, 176, 224}[i], w = (int[]){160, 40, 80}[i], ink = 0;
    for (int y = 88; y < sheet.height; y++)
      for (int x = x0; x < x0 + w; x++) ink += px(&sheet, x, y)[0] == 235;
    assert_true(ink > 20);
  }
  for (int x = 0; x < sheet.width; x++)
    for (int y = 0; y < 8; y++) assert_int_equal(px(&sheet, x, y)[0], 28);
  mp_image_free(&sheet);
  /* Default height: the smallest input's, at most 512. */
  assert_ok(mp_contact_sheet(items, 3, 0, &sheet));
  assert_int_equal(sheet.height, 8 + 64 + 7 * 2 + 12 + 4);
  mp_image_free(&sheet);
  assert_err_contains(mp_contact_sheet(items, 0, 80, &sheet), "no images");
  mp_image_free(&a), mp_image_free(&b), mp_image_free(&m);
}

static void test_font(void **state) {
  (void)state;
  mp_image img;
  solid(&img, 40, 20, 3, 0);
  const uint8_t white[3] = {255, 255, 255};
  mp_draw_text(&img, 1, 1, "l1", 1, white); /* lower case is drawn as upper case */
  /* 'L': left column set on all 7 rows, bottom row full 5 wide. */
  for (int y = 1; y < 8; y++) assert_int_equal(px(&img, 1, y)[0], 255);
  for (int x = 1; x < 6; x++) assert_int_equal(px(&img, x, 7)[0], 255);
  assert_int_equal(px(&img, 2, 3)[0], 0);
  /* '1' starts 6 px later: its stem is the middle column. */
  for (int y = 1; y < 8; y++) assert_int_equal(px(&img, 7 + 2, y)[0], 255);
  assert_int_equal(mp_text_width("ab", 2), 22);
  assert_int_equal(mp_text_width("", 2), 0);
  /* Drawing off the edge is clipped, not a crash. */
  mp_draw_text(&img, 35, 15, "WWW\xc3\xa9", 3, white);
  mp_draw_text(&img, -100, -100, "X", 1, white);
  mp_image_free(&img);
}

static void test_long_label_is_cut(void **state) {
  (void)state;
  mp_image a, sheet;
  solid(&a, 40, 40, 3, 0);
  mp_sheet_item item = {&a, "a very long caption that cannot fit"};
  assert_ok(mp_contact_sheet(&item, 1, 40, &sheet));
  for (int y = 48; y < sheet.height; y++) /* nothing drawn beyond the image's right edge */
    for (int x = 8 + 40; x < sheet.width; x++) assert_int_equal(px(&sheet, x, y)[0], 28);
  mp_image_free(&sheet);
  mp_image_free(&a);
}

static void test_wraps_and_writes(void **state) {
  (void)state;
  mp_image wide, sheet;
  solid(&wide, 3000, 500, 3, 120); /* 3000 px per cell at height 500: two per row */
  mp_sheet_item items[5];
  for (int i = 0; i < 5; i++) items[i] = (mp_sheet_item){&wide, "w"};
  assert_ok(mp_contact_sheet(items, 5, 500, &sheet));
  assert_int_equal(sheet.width, 8 + 2 * (3000 + 8));
  int row_h = 8 + 500 + 14 + 12;
  assert_int_equal(sheet.height, 8 + 3 * row_h - 4);
  assert_memory_equal(px(&sheet, 8, 8 + 2 * row_h), ((uint8_t[]){120, 120, 120}), 3); /* third row, first cell */
  assert_memory_equal(px(&sheet, 3016 + 10, 8 + 2 * row_h), ((uint8_t[]){28, 28, 30}), 3); /* no second cell there */
  mp_image_free(&sheet);
  char *dir = test_tmpdir(), path[512];
  snprintf(path, sizeof path, "%s/sheet.png", dir);
  assert_ok(mp_contact_sheet_write(path, items, 2, 100));
  mp_image back;
  assert_ok(mp_image_read(path, 3, &back));
  assert_int_equal(back.height, 8 + (8 + 100 + 14 + 12) - 4);
  mp_image_free(&back);
  free(dir);
  mp_image_free(&wide);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_layout_and_content),
      cmocka_unit_test(test_font),
      cmocka_unit_test(test_long_label_is_cut),
      cmocka_unit_test(test_wraps_and_writes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
