# Writes version/git.h with HAUL_BUILD_GIT, the `git describe` of the
# source tree ("" when git or the history is not at hand), at every
# build. The file is rewritten only when its text changes, so that a
# build without a new commit recompiles nothing.
#
#   cmake -DGIT=git -DSOURCE=DIR -DOUTPUT=FILE -P git-describe.cmake
set(describe "")
if(GIT)
    # GIT_OPTIONAL_LOCKS=0: --dirty refreshes the index, and must not hold
    # its lock against a git command the developer runs meanwhile.
    execute_process(
        COMMAND ${CMAKE_COMMAND} -E env GIT_OPTIONAL_LOCKS=0
                ${GIT} -C ${SOURCE} describe --always --dirty --tags
        OUTPUT_VARIABLE describe
        OUTPUT_STRIP_TRAILING_WHITESPACE
        ERROR_QUIET
        RESULT_VARIABLE status)
    if(NOT status EQUAL 0)
        set(describe "")
    endif()
endif()
set(text "/* Generated at build time by src/version/git-describe.cmake: do not edit. */\n#define HAUL_BUILD_GIT \"${describe}\"\n")
if(EXISTS ${OUTPUT})
    file(READ ${OUTPUT} old)
    if(old STREQUAL text)
        return()
    endif()
endif()
file(WRITE ${OUTPUT} "${text}")
